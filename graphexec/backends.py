"""Compiled task backends: run each task of a plan as a ``torch.compile``-d or ONNX Runtime call.

What it decides
---------------
`compile_plan` turns every dispatched (non-inline) task of a plan into one compiled callable
over the task's input values, returning its output values, so the scheduler keeps its
concurrency between tasks while each task runs faster kernels:

* ``"onnxruntime"``: the task's nodes, wrapped as one ``nn.Module``, are exported with
  ``torch.onnx.export`` (the TorchScript-based exporter: the dynamo one needs ``onnxscript``)
  and run in their own ``onnxruntime.InferenceSession``. Its **thread budget** is
  ``intra_op_num_threads``: by default the cores divided by the number of dispatched tasks at
  the task's level, so a chain (one task per level) gets every core and concurrent branches
  one each. ORT's thread pools are per session, so this holds whatever torch's parallel
  backend is. ORT is inference-only: calling a task that would need gradients raises.
* ``"inductor"``: ``torch.compile`` of the same module (``dynamic=False``); inductor's C++
  kernels take their OpenMP thread count when compiled, not from the calling thread.

Each compiled task is checked against the eager task on the example inputs (float32
tolerance); a task that cannot be exported/compiled, has non-tensor inputs or outputs, or
differs, falls back to eager with a `CompileFallbackWarning` naming it. Calls with input
shapes other than the example's run eagerly (no re-export at run time). Compile/export time is
recorded per task in `CompiledPlan.compile_s`.

Running: `CompiledRunner` (a `ThreadExecutor` whose tasks call the compiled callables) ::

    compiled = compile_plan(plan, "onnxruntime", example_inputs=(x,))
    with CompiledRunner(compiled) as ex:
        out = ex.run(plan, x)
"""

from __future__ import annotations

import dataclasses
import io
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .executors.threads import ThreadExecutor
from .graph import Node
from .interpret import program_values
from .plans import Plan, Task

__all__ = ["BACKENDS", "CompileFallbackWarning", "CompiledPlan", "CompiledRunner", "compile_plan"]

BACKENDS = ("inductor", "onnxruntime")


class CompileFallbackWarning(UserWarning):
    """A task could not be compiled and runs eagerly."""


class _TaskModule(nn.Module):
    """A task's nodes as one module: ``forward(*task.inputs) -> tuple(task.outputs)``."""

    def __init__(self, task: Task, nodes: Mapping[str, Node]):
        super().__init__()
        self.task = task
        self.task_nodes = [nodes[n] for n in task.nodes]
        self.mods = nn.ModuleList([n.fn for n in self.task_nodes if isinstance(n.fn, nn.Module)])

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.task.inputs, xs, strict=True))
        for node in self.task_nodes:
            env[node.name] = node.fn(*[r.resolve(env[r.node]) for r in node.inputs], **node.kwargs)
        return tuple(env[o] for o in self.task.outputs)


class _Compiled:
    """A compiled task: ``call(inputs) -> {output name: tensor}``; eager for other shapes."""

    def __init__(self, task: Task, module: _TaskModule, fn: Callable, backend: str, shapes: Any):
        self.task, self.module, self.fn, self.backend, self.shapes = (
            task, module, fn, backend, shapes
        )  # fmt: skip

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        xs = [inputs[v] for v in self.task.inputs]
        if self._needs_grad(xs):
            raise RuntimeError(
                f"task '{self.task.name}': the onnxruntime backend is inference-only and "
                "this call needs gradients; run under torch.no_grad()/inference_mode() "
                "or use backend='eager'/'inductor'"
            )
        if tuple(tuple(x.shape) for x in xs) != self.shapes:
            outs = self.module(*xs)  # a shape the session was not exported for
        else:
            outs = self.fn(*xs)
        return dict(zip(self.task.outputs, outs, strict=True))

    def _needs_grad(self, xs: list[Any]) -> bool:
        if self.backend != "onnxruntime" or not torch.is_grad_enabled():
            return False
        return any(p.requires_grad for p in self.module.parameters()) or any(
            x.requires_grad for x in xs
        )


class CompiledPlan(Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]]):
    """Task name -> compiled callable, with compile times, thread budgets and fallbacks."""

    def __init__(self, plan: Plan, backend: str):
        self.plan, self.backend = plan, backend
        self.tasks: dict[str, _Compiled] = {}
        self.compile_s: dict[str, float] = {}
        self.threads: dict[str, int] = {}
        self.fallbacks: dict[str, str] = {}

    def __getitem__(self, name: str) -> _Compiled:
        return self.tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        total = sum(self.compile_s.values())
        return (
            f"CompiledPlan({self.backend}: {len(self.tasks)} compiled tasks, "
            f"{len(self.fallbacks)} eager fallbacks, compile {total:.2f} s)"
        )


def compile_plan(
    plan: Plan,
    backend: str = "onnxruntime",
    example_inputs: Sequence[Any] = (),
    intra_op_threads: int | None = None,
) -> CompiledPlan:
    """Compile every dispatched task of ``plan`` with ``backend``.

    Parameters
    ----------
    plan : Plan
    backend : {"onnxruntime", "inductor"}
    example_inputs : sequence
        Positional graph inputs: run once to get each task's example values and shapes.
    intra_op_threads : int, optional
        ORT threads per task session; default: ``torch.get_num_threads()`` divided by the
        number of dispatched tasks at the task's level (at least 1).

    Returns
    -------
    CompiledPlan
        A mapping task name -> callable; tasks that fell back are absent (and warned about).

    Raises
    ------
    ValueError
        If ``backend`` is unknown.
    ImportError
        If ``backend="onnxruntime"`` and onnxruntime is not installed
        (``pip install graphexec[onnx]``).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("pair")
    >>> x = g.input("x")
    >>> g.output(g.node("s", gx.add(), g.node("a", nn.Linear(4, 4), x),
    ...                 g.node("b", nn.Linear(4, 4), x)))
    >>> p = gx.plan(g, inline_below=0)
    >>> cp = compile_plan(p, "onnxruntime", example_inputs=(torch.randn(2, 4),))
    >>> sorted(cp), cp.threads["a"]
    (['a', 'b', 's'], 1)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "backend='onnxruntime' needs onnxruntime: pip install 'graphexec[onnx]'"
            ) from exc
    values = _example_values(plan, example_inputs)
    cores = torch.get_num_threads()
    # A plan that runs one by one (nothing to overlap, or overlap measured not to pay) runs one
    # task at a time: each gets every core. Otherwise cores are split across a level's tasks.
    width = {t: sum(not plan.tasks[u].inline for u in lv) if plan.parallel else 1
             for lv in plan.levels for t in lv}  # fmt: skip
    out = CompiledPlan(plan, backend)
    for name, task in plan.tasks.items():
        if task.inline:
            continue
        threads = intra_op_threads or max(1, cores // max(1, width[name]))
        out.threads[name] = threads
        t0 = time.perf_counter()
        try:
            compiled = _compile_task(plan, task, values, backend, threads)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            out.fallbacks[name] = reason
            warnings.warn(
                f"task '{name}' runs eagerly: {backend} failed ({reason})",
                CompileFallbackWarning,
                stacklevel=2,
            )
            continue
        out.compile_s[name] = time.perf_counter() - t0
        out.tasks[name] = compiled
    return out


def _example_values(plan: Plan, example_inputs: Sequence[Any]) -> dict[str, Any]:
    order = [n for task in plan.tasks.values() for n in task.nodes]  # topological
    return program_values(plan.graph, example_inputs, order)


def _compile_task(
    plan: Plan, task: Task, values: Mapping[str, Any], backend: str, threads: int
) -> _Compiled:
    xs = tuple(values[v] for v in task.inputs)
    want = [values[o] for o in task.outputs]
    if not all(isinstance(v, torch.Tensor) for v in (*xs, *want)):
        raise TypeError("inputs and outputs must all be tensors")
    module = _TaskModule(task, plan.graph.nodes)
    fn = _onnx(module, xs, threads) if backend == "onnxruntime" else _inductor(module, xs)
    with torch.no_grad():
        got = fn(*xs)
    for g, w, o in zip(got, want, task.outputs, strict=True):
        if g.shape != w.shape or not torch.allclose(g, w, rtol=1e-3, atol=1e-4):
            raise ValueError(f"compiled output '{o}' differs from eager")
    return _Compiled(task, module, fn, backend, tuple(tuple(x.shape) for x in xs))


def _onnx(module: _TaskModule, xs: tuple[torch.Tensor, ...], threads: int) -> Callable:
    import onnxruntime as ort

    buf = io.BytesIO()
    in_names = [f"in{i}" for i in range(len(xs))]
    out_names = [f"out{i}" for i in range(len(module.task.outputs))]
    # The exporter puts the module in eval() and back in the mode of the wrapper, which would
    # switch the user's own (eval) modules inside it to training: keep every module's mode.
    modes = {m: m.training for m in module.modules()}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns it is deprecated
            torch.onnx.export(
                module, xs, buf, dynamo=False, input_names=in_names, output_names=out_names
            )
    finally:
        for m, training in modes.items():
            m.training = training
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # ORT's pool threads spin after each run by default, taking the cores from the other
    # tasks graphexec runs at the same time (and from torch between calls): let them sleep.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    used = [i.name for i in sess.get_inputs()]  # the exporter drops inputs nothing reads

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {n: a.detach().numpy() for n, a in zip(in_names, args, strict=True) if n in used}
        return tuple(torch.from_numpy(o) for o in sess.run(out_names, feed))

    return run


def _inductor(module: _TaskModule, xs: tuple[torch.Tensor, ...]) -> Callable:
    return torch.compile(module, dynamic=False)


class CompiledRunner(ThreadExecutor):
    """Kept for old scripts: a `ThreadExecutor` that runs ``plan`` with ``compiled`` attached.

    Prefer ``gx.plan(graph, example_inputs, backend="onnxruntime")``: every executor then
    runs the compiled tasks (see ``run_task``'s ``compiled``).
    """

    name = "threads+compiled"

    def __init__(self, compiled: CompiledPlan, **kwargs: Any):
        super().__init__(**kwargs)
        self.compiled = compiled

    def _as_plan(self, plan: Plan | Any) -> Plan:
        p = super()._as_plan(plan)
        return p if p.compiled is self.compiled else dataclasses.replace(p, compiled=self.compiled)
