"""``torch.compile(model, backend="graphexec")``: every graph Dynamo hands over, planned and run.

Dynamo runs a model's Python, writes the torch calls it sees into ``fx`` graphs (several when
it meets a graph break, such as ``if x.sum() > 0:``) and hands each one, with example inputs,
to a backend, which returns what to call instead::

    torch.compile(model, backend="graphexec")       # the entry point ``torch_dynamo_backends``
      -> Backend(graph_module, example_inputs)      # once per graph, again on recompiles
           gx.trace(graph_module)                   # torch-level ops -> module-sized tasks
           gx.plan(graph, example_inputs=copies)    # measured; timed against the graph as is
      -> graph_module.forward                       # the plan did not win: Dynamo's graph
      -> CompiledGraph(*args)                       # it did: executor.run(plan, *args)

What it decides
---------------
* **One plan per graph.** `graphexec.trace` groups the graph's nodes into tasks by the
  ``nn_module_stack`` Dynamo records (parameters and buffers arrive as graph inputs), and
  `graphexec.plan` measures them and tries every decision end to end.
* **Handed back unless it wins.** A plan is kept only when it may beat Dynamo's graph and did:
  it overlaps branches, fuses modules or compiles tasks (a one-by-one plan of the same ops, cut
  into partition calls, can only add calls), and it ran in at most the policy's ``gain``
  (95%) of the graph's time side by side, in two trials in a row and by no more than overlap
  alone could (``source_margin=gain`` of `graphexec.plan`: one trial can be fooled by a burst
  of load). Otherwise the
  backend returns Dynamo's ``graph_module.forward`` itself, as ``backend="eager"`` does (its
  code generated first: `CompiledGraph.forward`): no graphexec code runs per call, and the
  compiled model costs what Dynamo's own guards and frame handling cost (measured in
  ``benchmarks/results/zoo.md``). ``CompiledGraph.plan``
  still says what was measured, and ``CompiledGraph.handed_back`` why the graph runs as it
  is. (`graphexec.trace` is more lenient: its plan is kept within 3% of the module.)
* **Planning leaves no trace.** Planning runs the graph many times: on copies of every
  example input that is not a parameter (in-place writes, BatchNorm's running statistics in
  training), under ``torch.random.fork_rng`` (dropout draws what eager would after it).
* **When example inputs are not real.** On torch 2.13 a backend receives the call's real
  tensors; with ``dynamic=True`` symbolic sizes (``SymInt``) come too, and other callers may
  pass fake tensors. Then the graph is planned on its first real call, the same way.
* **Fallback.** A graph that cannot be imported or planned (it switches grad mode between
  nodes, a node fails on the example inputs) runs as Dynamo gave it, with a
  `PlanFallbackWarning` that names the node.
* **Executors.** ``executor="threads"`` by default (autograd flows through it, so training
  works); ``"auto"`` picks CUDA streams for graphs on a GPU (planned from estimates, as
  `graphexec.GraphModule` plans for streams); one executor per backend, shared by its
  graphs. A name makes one that ``Backend.close()`` closes; an instance stays the caller's.

Options go through ``torch.compile(model, backend="graphexec", options={...})`` or
``gx.compile_backend(executor=..., **plan_kwargs)``; both take ``executor`` and the keyword
arguments of `graphexec.plan`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .decisions import MODULE, last
from .executors import CudaStreamExecutor, Executor, SequentialExecutor, make_executor
from .fx_import import trace
from .graph import Graph
from .plans import Plan
from .policy import DEFAULT
from .tuner import Tuner

__all__ = ["Backend", "CompiledGraph", "PlanFallbackWarning", "backend", "compile_backend"]


class PlanFallbackWarning(UserWarning):
    """A graph Dynamo handed over could not be planned and runs as Dynamo gave it."""


class Backend:
    """A ``torch.compile`` backend that plans and runs each graph with graphexec.

    Parameters
    ----------
    executor : str or Executor
        ``"threads"`` (default), ``"sequential"``, ``"dask"``, ``"cuda"``, ``"auto"`` (CUDA
        streams when the first graph's inputs are on a GPU, threads otherwise), or an
        executor.
    **plan_kwargs
        Passed to `graphexec.plan` (``check=False`` plans faster, untried).

    Attributes
    ----------
    graphs : list of CompiledGraph
        Every graph this backend was given, in order (``graphs[i].plan`` once planned).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    >>> backend = gx.compile_backend(executor="sequential", check=False)
    >>> compiled = torch.compile(model, backend=backend)
    >>> x = torch.randn(2, 8)
    >>> torch.testing.assert_close(compiled(x), model(x))
    >>> [g.plan.graph.name for g in backend.graphs]
    ['dynamo_0']
    >>> backend.close()
    """

    def __init__(self, executor: str | Executor = "threads", **plan_kwargs: Any):
        self._spec = executor
        self._owned = not isinstance(executor, Executor)
        self._executor = None if self._owned else executor
        self.plan_kwargs = plan_kwargs
        self.graphs: list[CompiledGraph] = []
        self._lock = threading.Lock()  # Dynamo may compile frames of several threads

    def executor_for(self, example_inputs: Sequence[Any]) -> Executor:
        """The backend's executor, made on first use (``"auto"``: CUDA streams on the first
        GPU among ``example_inputs``, threads otherwise)."""
        with self._lock:
            if self._executor is None:
                gpu = next((v.device for v in example_inputs
                            if isinstance(v, torch.Tensor) and v.is_cuda), None)  # fmt: skip
                if self._spec != "auto":
                    self._executor = make_executor(self._spec)
                elif gpu is not None:
                    self._executor = make_executor("cuda", device=gpu)
                else:
                    self._executor = make_executor("threads")
            return self._executor

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any
    ) -> Callable[..., Any]:
        options = kwargs.pop("options", None)
        if options or kwargs:  # torch.compile(..., options=...) on a backend object
            return _shared({**self.plan_kwargs, "executor": self._spec, **(options or {})})(
                gm, example_inputs
            )
        with self._lock:
            name = f"dynamo_{len(self.graphs)}"
            compiled = CompiledGraph(gm, name, self)
            self.graphs.append(compiled)
        if not _all_real(example_inputs):
            return compiled  # planned on its first call (the wrapper stays in Dynamo's hands)
        compiled.make_plan(example_inputs)
        return compiled if compiled.handed_back is None else compiled.forward

    def close(self) -> None:
        """Close the executor if this backend made it (a later graph starts a new one)."""
        if self._owned and self._executor is not None:
            self._executor.close()

    reset = close  # what torch._dynamo.reset() calls on the backends it cached

    def __repr__(self) -> str:
        return f"Backend(executor={self._spec!r}, graphs={len(self.graphs)})"


class CompiledGraph:
    """One graph Dynamo handed over: its plan (made from the example inputs or on the first
    call), or the graph as Dynamo gave it, when it could not be planned (``fallback``) or the
    plan did not beat it (``handed_back`` says why in both cases)."""

    def __init__(self, gm: fx.GraphModule, name: str, backend: Backend):
        self.gm, self.name, self._backend = gm, name, backend
        self.graph: Graph | None = None
        self.tuner: Tuner | None = None  # the plan's owner once planned (`graphexec.tuner`)
        self.fallback: str | None = None  # why the graph could not be planned
        self.handed_back: str | None = None  # why it runs as Dynamo gave it
        self._executor: Executor | None = None
        self._run: Callable[..., Any] = self._first_call
        self._lock = threading.Lock()

    def make_plan(self, example_inputs: Sequence[Any]) -> None:
        """Import and plan the graph on copies of ``example_inputs``; on failure, warn and fall
        back to the graph as it is."""
        try:
            self.graph = trace(self.gm, name=self.name)
            executor = self._executor = self._backend.executor_for(example_inputs)
            kwargs = dict(self._backend.plan_kwargs)
            policy = kwargs.pop("policy", None) or DEFAULT
            kwargs = {"source_margin": policy.gain, **getattr(executor, "plan_defaults", {}),
                      **kwargs}  # fmt: skip
            # planning and re-checks run the graph: on copies of the inputs (in-place writes,
            # BatchNorm's running statistics), and leave the random state as it was
            tuner = Tuner(self.graph, policy=policy, local=executor.honours_budget,
                          plan_kwargs=kwargs,
                          measuring=lambda: _quiet_rng(example_inputs))  # fmt: skip
            if isinstance(executor, CudaStreamExecutor):  # host timings: launches, not kernels
                tuner.replan()  # as GraphModule plans for streams
            else:
                tuner.replan(_copies(example_inputs))
            self.tuner = tuner
        except Exception as exc:  # noqa: BLE001 - any failure: run Dynamo's graph instead
            node = getattr(exc, "node", None)
            where = f"node '{node}'" if node else "it"
            self.fallback = self.handed_back = f"{type(exc).__name__}: {exc}"
            self._run = self.forward
            warnings.warn(
                f"graphexec could not plan Dynamo's graph '{self.name}' ({where}): {exc}; "
                "running it as Dynamo gave it",
                PlanFallbackWarning,
                stacklevel=2,
            )
            return
        self.handed_back = _why_as_is(self.plan, self.graph, executor)
        if self.handed_back is None:
            self._run = self._planned
        else:
            self._run = self.forward

    @property
    def plan(self) -> Plan | None:
        """The plan this graph runs (None before the first call or when it failed)."""
        return self.tuner.plan if self.tuner is not None else None

    def _planned(self, *args: Any) -> Any:
        """The plan, run by the executor, watched and re-checked by the tuner (on copies of
        this call's inputs)."""
        run = self._executor.run
        return self.tuner.call(lambda p: run(p, *args), lambda: _copies(args))

    @property
    def forward(self) -> Callable[..., Any]:
        """Dynamo's graph as it is: its generated ``forward``.

        Dynamo's graphs are compiled lazily (``_LazyGraphModule``): until then ``forward`` is
        a stub that checks for a recompile and goes through ``nn.Module.__call__`` on every
        call, and ``backend="eager"`` returns that stub. The code is generated here once, so
        a handed-back graph runs no more per call than it does there.
        """
        getattr(self.gm, "real_recompile", lambda: None)()
        return self.gm.forward

    def _first_call(self, *args: Any) -> Any:
        with self._lock:
            if self._run == self._first_call:
                self.make_plan(args)
        return self._run(*args)

    def __call__(self, *args: Any) -> Any:
        return self._run(*args)

    def __repr__(self) -> str:
        if self.fallback:
            state = f"runs as Dynamo gave it: {self.fallback}"
        elif self.handed_back:
            state = f"runs as Dynamo gave it: {self.handed_back}"
        else:
            state = "planned" if self.plan else "unplanned"
        return f"CompiledGraph({self.name!r}, {state})"


def _why_as_is(p: Plan, graph: Graph, executor: Executor) -> str | None:
    """Why Dynamo's graph should run as it is rather than ``p`` (None: run the plan).

    A plan with a measured thread budget runs through the executor, which honours it (the
    module as it is included): Dynamo's graph would run at the caller's threads instead."""
    if p.thread_budget is not None and executor.honours_budget:
        return None
    if p.as_is is not None:
        return str(last(p.decisions, MODULE))
    overlaps = p.parallel and not isinstance(executor, SequentialExecutor)
    if not overlaps and p.compiled is None and p.graph is graph:
        return (
            "its plan runs the same ops one after another (nothing overlapped, fused or compiled)"
        )
    return None


def compile_backend(executor: str | Executor = "threads", **plan_kwargs: Any) -> Backend:
    """A ``torch.compile`` backend with options: ``torch.compile(m, backend=compile_backend())``.

    Parameters
    ----------
    executor : str or Executor
        As `Backend` takes it (default ``"threads"``).
    **plan_kwargs
        Passed to `graphexec.plan` for every graph.

    Returns
    -------
    Backend
    """
    return Backend(executor, **plan_kwargs)


_SHARED: dict[str, Backend] = {}
_SHARED_LOCK = threading.Lock()


def _shared(options: dict[str, Any]) -> Backend:
    """One backend (and executor) per distinct options, for the registered name."""
    key = repr(sorted(options.items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Backend(**options)
        return _SHARED[key]


def backend(
    gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """The backend ``torch.compile`` finds as ``"graphexec"`` (entry point
    ``torch_dynamo_backends``); ``options`` are `Backend`'s arguments."""
    return _shared(dict(options or {}))(gm, example_inputs)


def _close_shared() -> None:
    """``torch._dynamo.reset()``: the registered backend's executors stop their threads."""
    with _SHARED_LOCK:
        for b in _SHARED.values():
            b.close()


backend.reset = _close_shared  # type: ignore[attr-defined]


def _all_real(values: Sequence[Any]) -> bool:
    """No fake tensor and no symbolic number among ``values``: they can be measured on."""
    from torch._subclasses.fake_tensor import is_fake

    symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool)
    return not any(
        isinstance(v, symbolic) or (isinstance(v, torch.Tensor) and is_fake(v)) for v in values
    )


def _copies(values: Sequence[Any]) -> list[Any]:
    """What planning runs on: copies of every tensor but the parameters (never written)."""
    return [
        v.detach().clone() if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
        else v
        for v in values
    ]  # fmt: skip


@contextlib.contextmanager
def _quiet_rng(values: Sequence[Any]) -> Iterator[None]:
    """Random state as it was before planning ran the graph (CPU, and the inputs' GPUs)."""
    devices = sorted({v.device.index or 0 for v in values
                      if isinstance(v, torch.Tensor) and v.is_cuda})  # fmt: skip
    with torch.random.fork_rng(devices=devices):
        yield
