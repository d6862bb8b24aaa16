"""The reference executor: every task on the calling thread, one after another.

This is the specification the other executors are tested against. ``schedule="levels"`` runs
level by level; ``"dataflow"`` runs in plan (program) order. Both are valid topological
orders of the task DAG, so both give the same result.
"""

from __future__ import annotations

from typing import Any

from ..plans import Plan
from ..profile import TaskEvent
from .base import Executor
from .local import RunState

__all__ = ["SequentialExecutor"]


class SequentialExecutor(Executor):
    """Run every task in order on the calling thread (the reference).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("chain")
    >>> g.output(g.node("double", lambda t: 2 * t, g.input("x")))
    >>> gx.SequentialExecutor().run(gx.plan(g), torch.ones(2)).tolist()
    [2.0, 2.0]
    """

    name = "sequential"
    honours_budget = True

    def _inline(self, plan: Plan) -> bool:
        return plan.compiled is None

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        state = RunState(self._schedules(plan), env, events, modes=None)
        if self.schedule == "levels":
            order = [t for level in plan.levels for t in level]
        else:
            order = list(plan.tasks)
        for name in order:
            state.finish(name, state.run(name))
