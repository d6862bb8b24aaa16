"""graphexec: a dataflow graph executor for neural-network model DAGs.

Declare a model as a DAG of layer nodes (or import an ``nn.Module`` with `trace`), `plan` it
by depth, and run same-depth branches concurrently on threads, CUDA streams or Dask workers,
with results equal to eager PyTorch.

>>> import torch, torch.nn as nn, graphexec as gx
>>> g = gx.Graph("two_towers")
>>> x = g.input("x")
>>> a = g.node("tower_a", nn.Linear(8, 8), x)
>>> b = g.node("tower_b", nn.Linear(8, 8), x)
>>> g.output(g.node("merge", gx.stack(dim=1), a, b))
>>> gx.ThreadExecutor().run(gx.plan(g), torch.randn(4, 8)).shape
torch.Size([4, 2, 8])
"""

from __future__ import annotations

from typing import Any

from ._version import __version__ as __version__  # gx.__version__
from .cache import CacheWarning
from .drift import Watch
from .dynamo import PlanFallbackWarning, compile_backend
from .errors import (
    ArityError,
    CycleError,
    DeadNodeWarning,
    DuplicateNameError,
    GraphError,
    InPlaceWarning,
    NodeError,
    UnknownNodeError,
    UnreachableOutputError,
)
from .executors import (
    CudaStreamExecutor,
    Executor,
    SequentialExecutor,
    ThreadExecutor,
    make_executor,
)
from .fx_import import UntraceableError, trace
from .graph import Graph, Node, Ref
from .merge import MergeOp, add, cat, getitem, identity, mean, stack, tuple_
from .merge import sum as sum  # noqa: A004 - gx.sum(), not exported by *: see __all__
from .module import GraphModule
from .plans import Plan, Split, Task
from .policy import Policy
from .profile import TaskEvent, Timeline
from .split import SplitError
from .tune import plan
from .viz import draw_plan, gantt, plan_to_dot, to_chrome

tuple = tuple_  # noqa: A001 - gx.tuple() is the public name of the gathering merge op
Trace = Timeline  # the run record's name before 0.2 (it read too much like gx.trace)

# Rendering lives at the edge: Plan and Timeline are plain data and import no drawing code;
# the package wires the picture methods users call onto them here.
Plan.draw = draw_plan
Plan.to_dot = plan_to_dot
Timeline.gantt = gantt
Timeline.to_chrome = to_chrome

__all__ = [
    "Graph", "Node", "Ref",
    "plan", "Plan", "Task", "Split",
    "Executor", "SequentialExecutor", "ThreadExecutor", "CudaStreamExecutor", "DaskExecutor",
    "make_executor",
    "GraphModule", "trace", "compile_backend",
    "Timeline", "TaskEvent",
    # gx.sum and gx.tuple are left out: `from graphexec import *` must not shadow the builtins
    "MergeOp", "stack", "cat", "add", "mean", "identity", "getitem",
    "GraphError", "DuplicateNameError", "UnknownNodeError", "CycleError",
    "UnreachableOutputError", "ArityError", "NodeError", "DeadNodeWarning", "InPlaceWarning",
    "SplitError", "UntraceableError", "PlanFallbackWarning", "CacheWarning", "Watch", "Policy",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "DaskExecutor":  # dask.distributed is heavy: imported when first asked for
        from .executors.dask import DaskExecutor

        return DaskExecutor
    if name == "PlacementError":
        from .executors.dask import PlacementError

        return PlacementError
    raise AttributeError(f"module 'graphexec' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (tab completion, ``dir(gx)``): the lazy ones included, the imports
    this file needs (``Any``, ``annotations``) and the submodules left out."""
    return sorted({*__all__, "sum", "tuple", "Trace", "PlacementError", "__version__"})
