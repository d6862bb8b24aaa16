"""The reference executor: every task on the calling thread, one after another.

This is the specification the other executors are tested against. ``schedule="levels"`` runs
level by level; ``"dataflow"`` runs in plan (program) order. Both are valid topological
orders of the task DAG, so both give the same result. It is `LocalExecutor`'s loop with
nothing ever run at once (`LocalExecutor._run_one_by_one`).
"""

from __future__ import annotations

from ..plans import Plan
from .local import LocalExecutor

__all__ = ["SequentialExecutor"]


class SequentialExecutor(LocalExecutor):
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

    def _concurrent(self, plan: Plan) -> bool:
        return False
