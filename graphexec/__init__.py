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

from .errors import (
    ArityError,
    CycleError,
    DeadNodeWarning,
    DuplicateNameError,
    GraphError,
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
from .graph import Graph, Node, Ref
from .merge import MergeOp, add, cat, getitem, identity, mean, stack, sum, tuple_
from .module import GraphModule
from .planner import Plan, Task, plan
from .profile import TaskEvent, Trace
from .trace import trace

tuple = tuple_  # noqa: A001 - gx.tuple() is the public name of the gathering merge op

__version__ = "0.1.0"

__all__ = [
    "Graph", "Node", "Ref",
    "plan", "Plan", "Task",
    "Executor", "SequentialExecutor", "ThreadExecutor", "CudaStreamExecutor", "DaskExecutor",
    "make_executor",
    "GraphModule", "trace",
    "Trace", "TaskEvent",
    "MergeOp", "stack", "cat", "add", "sum", "mean", "identity", "tuple", "getitem",
    "GraphError", "DuplicateNameError", "UnknownNodeError", "CycleError",
    "UnreachableOutputError", "ArityError", "NodeError", "DeadNodeWarning",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "DaskExecutor":  # dask.distributed is heavy: imported when first asked for
        from .executors.dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(f"module 'graphexec' has no attribute {name!r}")
