"""`GraphModule`: a graph and an executor as one ``nn.Module``.

The node modules are registered under ``nodes.<name>`` (dots in node names become ``__``,
and names an ``nn.ModuleDict`` has as attributes, such as ``to``, get a trailing ``_``),
so ``parameters()``, ``state_dict()``, ``train()/eval()``, ``.to()`` and optimizers see them
exactly as in any module. The graph keeps pointing at the same module objects, so what
``.to()`` or an optimizer changes is what runs. Autograd flows through the thread executor
(the autograd graph is not tied to a thread); worker threads run under the caller's grad,
inference and autocast modes (see `graphexec.executors.base.capture_modes`).

The plan is made on the first call and kept. By default (``measure=True``) it is made from
that call's inputs: each node is timed with the caller's intra-op threads and with one thread
(a few extra runs of the graph, under ``no_grad`` and with the modules briefly in ``eval()`` so
that no running statistic moves), and the planner decides from those times what to inline and
whether overlapping branches pays at all. ``measure=False`` plans from parameter counts;
``replan()`` makes a new plan. Measured decisions are kept across processes
(`graphexec.cache`): a second process with the same graph, inputs and machine reuses them.

A measured plan is watched (``adapt=True``, the default): each call is timed with one
``perf_counter`` pair and, when calls drift from what the plan measured (the load changed),
the decisions that can flip with the load (the thread budget, overlap) are tried again on
that call's inputs, at most a few percent of the time watched (`graphexec.drift`); a switch
is written into ``plan.decisions``. ``adapt=False`` turns this off; a `graphexec.drift.Watch`
sets its thresholds (and clock).

On CUDA streams (`CudaStreamExecutor`) the plan is made from parameter counts, with that
executor's `plan_defaults`: the planner times nodes on the host, which for GPU work measures
kernel launches, not kernels. So it is on Dask (`DaskExecutor`): its tasks run in the workers'
processes, where what the planner would try in this one (the thread budget, running the
traced module as it is) does not apply.

``executor="auto"`` picks `CudaStreamExecutor` on the parameters' GPU when the graph's first
parameter (or buffer) is on one, `ThreadExecutor` otherwise. It decides at construction and
checks again at every call, so ``gm.to("cuda")`` after construction switches to streams on the
next call (closing the executor it made before, and planning again).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from .drift import Watch
from .errors import GraphError
from .executors import Executor, make_executor
from .executors.cuda import auto_choice
from .graph import Graph, expect_graph
from .interpret import bind_inputs
from .plans import Plan
from .policy import Policy
from .tuner import Tuner

__all__ = ["GraphModule"]


class GraphModule(nn.Module):
    """An ``nn.Module`` that runs a `Graph` with an executor.

    Parameters
    ----------
    graph : Graph
    executor : str or Executor
        ``"threads"`` (default), ``"sequential"``, ``"cuda"``, ``"dask"``, ``"auto"`` (CUDA
        streams when the parameters are on a GPU, threads otherwise; checked at every call), or
        an executor instance (``gx.ThreadExecutor(schedule="levels")``). A name makes an
        executor that this module owns and closes in `close`; an instance given stays the
        caller's.
    example_inputs : sequence, optional
        Plan now, with costs measured on these inputs.
    measure : bool
        Without ``example_inputs``: measure costs on the first call's inputs (default), or
        estimate them from parameter counts (False).
    adapt : bool or Watch
        Re-try the load-dependent decisions of a measured plan when its calls drift (default
        True; `graphexec.drift`); False: keep the plan as measured. A `graphexec.drift.Watch`
        gives the thresholds and the clock.
    policy : Policy, optional
        The rules the plan is made by and re-checked by (`graphexec.policy.Policy`), and the
        watch's thresholds (unless ``adapt`` is a `Watch` of its own).
    **plan_kwargs
        Passed to `graphexec.plan`.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("towers")
    >>> x = g.input("x")
    >>> g.output(g.node("sum", gx.add(), g.node("a", nn.Linear(4, 2), x),
    ...                 g.node("b", nn.Linear(4, 2), x)))
    >>> gm = gx.GraphModule(g)
    >>> sorted(gm.state_dict())
    ['nodes.a.bias', 'nodes.a.weight', 'nodes.b.bias', 'nodes.b.weight']
    >>> gm(torch.randn(5, 4)).shape
    torch.Size([5, 2])
    >>> gm.close()
    """

    def __init__(
        self,
        graph: Graph,
        executor: str | Executor = "threads",
        *,
        example_inputs: Sequence[Any] | None = None,
        measure: bool = True,
        adapt: bool | Watch = True,
        policy: Policy | None = None,
        **plan_kwargs: Any,
    ):
        """An `nn.Module` that runs ``graph`` on ``executor``: see `GraphModule` for the
        parameters."""
        expect_graph(graph, "gx.GraphModule")
        super().__init__()
        self.graph = graph
        self.nodes = nn.ModuleDict(_registered(graph))
        self._owns_executor = not isinstance(executor, Executor)
        self._auto = auto_choice(graph) if executor == "auto" else None
        self._switch = threading.Lock()  # executor="auto": one switch at a time
        self.executor = make_executor(executor, graph=graph)
        # Measured plans are of this process's threads: executors that run elsewhere (CUDA
        # streams: kernels the host clock cannot see; Dask: other processes, where the plan's
        # thread budget and "as it is" do not apply) plan from estimates (module docstring).
        self._tuner = Tuner(
            graph, policy=policy, measure=measure, local=self.executor.honours_budget,
            watch=adapt, plan_kwargs={**getattr(self.executor, "plan_defaults", {}),
                                      **plan_kwargs},
            measuring=self._timing_mode,
        )  # fmt: skip
        if example_inputs is not None:
            self.replan(example_inputs=example_inputs)

    @property
    def plan(self) -> Plan:
        """The plan this module runs (made on first use)."""
        return self._tuner.plan

    @property
    def policy(self) -> Policy:
        """The rules this module's plan is made and re-checked by."""
        return self._tuner.policy

    @property
    def tuner(self) -> Tuner:
        """The owner of this module's plan and its re-checks (`graphexec.tuner.Tuner`)."""
        return self._tuner

    def replan(self, example_inputs: Sequence[Any] | None = None, **plan_kwargs: Any) -> Plan:
        """Plan again, e.g. with costs measured on ``example_inputs``."""
        return self._tuner.replan(example_inputs, **plan_kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self.graph.graph_call(args, kwargs)  # a traced module's own call, too
        if self._auto is not None:
            self._follow_parameters()
        if not self.executor.keeps_autograd and torch.is_grad_enabled():
            self._refuse_training()
        return self._tuner.call(lambda p: self.executor.run(p, *args, **kwargs),
                                lambda: self._inputs(args, kwargs))  # fmt: skip

    def _refuse_training(self) -> None:
        """Outputs of an executor that keeps no autograd history (Dask) would train nothing:
        say so rather than return them silently."""
        trained = next((n for n, t in self.named_parameters() if t.requires_grad), None)
        if trained is not None:
            raise RuntimeError(
                f"GraphModule '{self.graph.name}': the {self.executor.name} executor returns "
                f"outputs without autograd history, so parameter '{trained}' (requires_grad) "
                "would get no gradient. Train with executor='threads' (or 'sequential'); for "
                "inference, call under torch.no_grad() or torch.inference_mode()."
            )

    def _inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        env = bind_inputs(self.graph, args, kwargs)
        return [env[n] for n in self.graph.inputs]

    def _follow_parameters(self) -> None:
        """``executor="auto"``: switch executors when the parameters moved to or from a GPU."""
        choice = auto_choice(self.graph)
        if choice == self._auto:
            return
        with self._switch:
            if choice != self._auto:
                old, self.executor = self.executor, make_executor(choice[0], **choice[1])
                self._auto = choice
                self._tuner.reset(local=self.executor.honours_budget)
                old.close()

    @contextlib.contextmanager
    def _timing_mode(self) -> Iterator[None]:
        """Timing only: in ``eval()``, so BatchNorm does not update its running statistics;
        each module's mode is restored on every path."""
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            yield
        finally:
            for m, training in modes.items():
                m.training = training

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle: locks do not copy
        return {**self.__dict__, "_switch": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._switch = threading.Lock()

    def close(self) -> None:
        """Close the executor if this module made it."""
        if self._owns_executor:
            self.executor.close()

    def __enter__(self) -> GraphModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extra_repr(self) -> str:
        return f"graph={self.graph.name!r}, executor={self.executor!r}"


def _key(name: str) -> str:
    """The ``nodes.<key>`` a node module is registered under: dots become ``__`` (module names
    cannot hold dots), and a name an ``nn.ModuleDict`` already has as an attribute (``to``,
    ``float``, ``train``, ``keys``) gets a trailing ``_``, as ``gx.trace`` names such nodes.

    >>> _key("layer1.conv"), _key("to"), _key("head")
    ('layer1__conv', 'to_', 'head')
    """
    key = name.replace(".", "__")
    return key + "_" if hasattr(nn.ModuleDict, key) else key


def _registered(graph: Graph) -> dict[str, nn.Module]:
    """Node modules by `_key`; two nodes whose keys meet are a `GraphError` naming both."""
    modules: dict[str, nn.Module] = {}
    owner: dict[str, str] = {}
    for n in graph:
        if isinstance(n.fn, nn.Module):
            key = _key(n.name)
            if key in owner:
                raise GraphError(
                    f"graph '{graph.name}': nodes '{owner[key]}' and '{n.name}' would both be "
                    f"registered as GraphModule.nodes.{key}; rename one",
                    n.name,
                )
            modules[key], owner[key] = n.fn, n.name
    return modules
