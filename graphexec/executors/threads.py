"""Run same-depth branches concurrently on a thread pool (torch ops release the GIL).

Lanes and thread budget
-----------------------
The pool has ``workers`` threads (default: one per intra-op thread torch would use). Each
worker sets its own intra-op thread count to ``intra_op_threads`` (default: the caller's count
divided by ``workers``, at least 1) when it starts: with torch's OpenMP backend that setting
is per thread, so concurrent branches do not oversubscribe the cores while the calling thread
keeps all of them. The loop runs a task on the calling thread whenever it is the only thing
that can run (a chain, a single-branch level), so stretches without parallelism run exactly
as eager PyTorch would, with every core. A plan with no two dispatchable tasks at the same
level (``plan.parallel`` is False) never touches the pool.

A plan's measured ``thread_budget`` (`graphexec.tune`) is honoured as every local executor
honours it: the call (the loop that dispatches the lanes, or the straight-line program) runs at
that many intra-op threads on the calling thread, its own count set for the call and put back
(`graphexec.executors.base.BudgetLanes`).

Caveat (measured on torch 2.13, OpenMP): after a worker calls ``torch.set_num_threads``,
threads created later start with that count too; `graphexec.executors.lanes.enter_lane` puts
the process default back, so neither the calling thread nor threads made later are affected.

The loop is `LocalExecutor`'s: this backend only says how a task is started (on the pool)
and that a plan's tasks overlap when ``plan.parallel`` says some can. Where state crosses
threads: tasks receive their inputs as a fresh dict and return their outputs; only the calling
thread touches the run's value table.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from ..plans import Plan
from ..profile import TaskEvent
from .base import IdCache
from .lanes import lane_pool, lane_threads
from .local import LocalExecutor

__all__ = ["ThreadExecutor"]


class ThreadExecutor(LocalExecutor):
    """Dispatch concurrent tasks to a thread pool.

    Parameters
    ----------
    workers : int, optional
        Pool threads (default: ``torch.get_num_threads()``, at least 2).
    schedule : {"dataflow", "levels"}
        ``"dataflow"`` (default) starts a task as soon as its inputs are ready;
        ``"levels"`` runs one depth level at a time with a barrier in between.
    intra_op_threads : int, optional
        torch intra-op threads of each pool thread (default: caller's threads // workers).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("pair")
    >>> x = g.input("x")
    >>> a, b = g.node("a", nn.Linear(4, 4), x), g.node("b", nn.Linear(4, 4), x)
    >>> g.output(g.node("s", gx.add(), a, b))
    >>> with gx.ThreadExecutor() as ex:
    ...     ex.run(gx.plan(g), torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """

    name = "threads"

    def __init__(
        self,
        workers: int | None = None,
        schedule: str = "dataflow",
        intra_op_threads: int | None = None,
    ):
        super().__init__(schedule)
        self.workers = workers or max(2, torch.get_num_threads())
        self.intra_op_threads = intra_op_threads or max(1, torch.get_num_threads() // self.workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # a split plan's shards run at their lane's threads, not at a budget of their own
        self._on_lane = IdCache(lambda p: dataclasses.replace(p, thread_budget=None))

    def _start(self, fn: Callable[[], dict[str, Any]]) -> Future:
        pool = self._pool
        if pool is None:
            with self._lock:  # several callers may share one executor
                if self._pool is None:
                    self._pool = lane_pool(self.workers, self.intra_op_threads, "graphexec")
                pool = self._pool
        return pool.submit(fn)

    def _run_shards(self, plan: Plan, shards: list[tuple[Any, ...]],
                    events: list[TaskEvent] | None) -> list[Any]:  # fmt: skip
        """Data parallelism: each shard's whole plan on a budget lane of its own, at once.

        A lane runs at the caller's intra-op threads divided among the shards (at least 1),
        the caller's own count untouched (`graphexec.executors.base.BudgetLanes`), under the
        caller's grad mode, inference mode and autocast: shards' autograd graphs join at the
        merge's ``torch.cat`` on the calling thread. Every shard is awaited before the first
        error (in shard order) is raised.
        """
        budget = max(1, torch.get_num_threads() // len(shards))
        if len(shards) == 1 or lane_threads() == budget:
            return super()._run_shards(plan, shards, events)  # already on such a lane
        here = self._on_lane(plan)
        futures = [self._budget.submit(budget, self._shard, here, s, events) for s in shards]
        wait(futures)
        return [f.result() for f in futures]

    def close(self) -> None:
        """Shut the pool down and join its threads (idempotent; the next run starts a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        super().close()

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle of a GraphModule
        return {**self.__dict__, "_pool": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ThreadExecutor(workers={self.workers}, schedule={self.schedule!r}, "
            f"intra_op_threads={self.intra_op_threads})"
        )
