"""Lanes: pool threads that run at a thread budget of their own, the process default put back.

A lane is a pool thread whose intra-op thread count is set once, when it starts
(`enter_lane`). With torch's OpenMP backend that count is per OS thread, so lanes running
side by side do not oversubscribe the cores while the calling thread keeps all of them. Two
kinds of pools are made of lanes: the `ThreadExecutor`'s pool (its ``intra_op_threads``), and
the thread budgets of `graphexec.executors.base.BudgetLanes` (a call at a measured budget,
data-parallel shards).

Where state crosses threads: ``torch.set_num_threads`` also stores a process default that a
thread reads on its first parallel op, so a lane puts that default back (`enter_lane`) and a
pool is handed out only once every lane is through that (`lane_pool`): a thread started after
the call that made the pool reads the default it had before.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import torch

__all__ = ["enter_lane", "lane_pool", "lane_threads", "process_default", "started"]

_lane = threading.local()  # .threads: the budget of the lane this thread is, if it is one


def process_default() -> int:
    """The intra-op thread count a thread started now would get (torch's process default;
    read on a new thread, because the calling thread may be a lane with its own count)."""
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    return got[0]


def enter_lane(threads: int, keep: int) -> None:
    """Set this (pool) thread to ``threads`` intra-op threads and leave the process default,
    which threads made later start from, at ``keep``.

    With torch's OpenMP backend the count is per OS thread, but ``torch.set_num_threads`` also
    stores a process default that a thread reads on its first parallel op (measured on torch
    2.13: after a pool thread set 1, a thread started later ran at 1). So the lane fixes its
    own count first (reading it pins it), then a short-lived thread sets the default back.
    """
    torch.set_num_threads(threads)
    torch.get_num_threads()  # pins this thread's count before the default is put back
    _lane.threads = threads
    if keep != threads:
        putback = threading.Thread(target=torch.set_num_threads, args=(keep,))
        putback.start()
        putback.join()


def lane_threads() -> int | None:
    """The thread budget of the lane the calling thread is, or None where it is no lane."""
    return getattr(_lane, "threads", None)


def started(pool: ThreadPoolExecutor, workers: int) -> ThreadPoolExecutor:
    """``pool`` with every worker started and through its initializer (`enter_lane`), so no
    worker is still setting its thread count (and putting the process default back) after
    the call that made the pool returns: a thread started then would read the wrong default.
    """
    barrier = threading.Barrier(workers, timeout=30)
    wait([pool.submit(barrier.wait) for _ in range(workers)])
    return pool


def lane_pool(workers: int, threads: int, prefix: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` lanes at ``threads`` intra-op threads each, every one started.

    >>> pool = lane_pool(2, 1, "doc")
    >>> pool.submit(lane_threads).result(), lane_threads()
    (1, None)
    >>> pool.shutdown()
    """
    pool = ThreadPoolExecutor(
        workers,
        thread_name_prefix=prefix,
        initializer=enter_lane,
        initargs=(threads, process_default()),
    )
    return started(pool, workers)
