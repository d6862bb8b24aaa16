"""What the `DaskExecutor` makes of a cluster's failures: re-run, blame a node, or give up clearly.

What it decides
---------------
* **A lost worker is the executor's problem, not the caller's.** Dask reports a worker that
  died in several ways, depending on when the executor meets it: a future cancelled because
  it read a copy that died with its worker (``CancelledError``), a scatter to a worker the
  scheduler has just removed (``KeyError: 'tcp://...'``), a connection to it that closes or is
  refused (``CommClosedError``, an ``OSError``), no valid worker left for a scatter
  (``TimeoutError``). `lost_worker` says yes to all of them while the scheduler is alive; the
  executor then places the call again on the workers that answer and re-runs it, up to its
  ``retries``, and beyond them raises `WorkerLostError`, not Dask's raw error.
* **A gone scheduler ends the executor** (`ClusterErrors`). The same errors with the client no
  longer running mean the scheduler is gone: `SchedulerUnreachableError`, at once, for this
  call and every later one (the weights and placements died with the scheduler).
* **A node that kills its worker is named, and not re-run for ever** (`blame`). When a worker
  dies the scheduler logs which tasks it was running (its ``remove-worker`` event). A job that
  was running on ``KILLS_ALLOWED`` workers when they died in one call raises a `NodeError`
  naming its nodes (a segfault, ``os._exit``, running out of memory), instead of being re-run
  until no worker is left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import Any

import distributed

from ...errors import NodeError
from .connect import SchedulerUnreachableError

__all__ = [
    "KILLS_ALLOWED",
    "ClusterErrors",
    "WorkerLostError",
    "blame",
    "gave_up",
    "killed_error",
    "lost_worker",
]

#: Worker deaths one job may be running at, in one call, before it is blamed for them.
KILLS_ALLOWED = 2


class WorkerLostError(RuntimeError):
    """A call lost workers (and the data on them) more often than its ``retries`` allow."""


def lost_worker(exc: BaseException) -> bool:
    """True when ``exc`` is Dask saying a worker (or data only on it) was lost, not a node error.

    Call it after `ClusterErrors` has turned "the scheduler is gone" into
    `SchedulerUnreachableError`, which is not a lost worker.
    """
    if isinstance(exc, SchedulerUnreachableError):
        return False
    if isinstance(exc, CancelledError | OSError):  # CommClosedError and TimeoutError included
        return True
    if isinstance(exc, KeyError) and len(exc.args) == 1:  # scheduler.scatter: workers[address]
        return isinstance(exc.args[0], str) and "://" in exc.args[0]
    return False


def gave_up(graph: str, attempts: int, exc: BaseException, workers: int) -> WorkerLostError:
    """The error for a call still losing workers after ``attempts`` runs."""
    return WorkerLostError(
        f"DaskExecutor: graph '{graph}' lost a worker (or data held only by one) in each of "
        f"{attempts} attempt(s); last: {type(exc).__name__}: {exc}. The cluster has {workers} "
        "worker(s) now; raise retries= to wait out more churn"
    )


def blame(
    client: distributed.Client, token: str, jobs: Mapping[str, Any], deaths: Counter
) -> NodeError | None:
    """Count, in ``deaths``, the jobs of call ``token`` that workers were running when they died.

    ``jobs`` maps job names to jobs (with their ``nodes``). Returns the `NodeError` for a job at
    `KILLS_ALLOWED` deaths, else None. Reads the scheduler's ``remove-worker`` events (see the
    module docstring).
    """
    keys = {f"{j}-{token}": j for j in jobs}
    try:
        events = client.get_events("all")
    except Exception:  # the blame makes a better message, never a reason to fail
        return None
    for _, msg in events:
        if isinstance(msg, dict) and msg.get("action") == "remove-worker":
            deaths.update(keys[k] for k in msg.get("processing-tasks", ()) if k in keys)
    worst = max(deaths, key=deaths.__getitem__, default=None)
    if worst is None or deaths[worst] < KILLS_ALLOWED:
        return None
    why = f"the worker running it died {deaths[worst]} times in this call"
    return _crash_error(worst, tuple(jobs[worst].nodes) if worst in jobs else (worst,), why)


def killed_error(exc: Exception, plan: Any) -> NodeError:
    """The `NodeError` for Dask's ``KilledWorker``: its task was running on
    ``distributed.scheduler.allowed-failures`` + 1 workers when they died."""
    job = str(exc.args[0]).rpartition("-")[0] or str(exc.args[0])
    task = plan.tasks.get(job)
    nodes = tuple(task.nodes) if task is not None else tuple(plan.graph.nodes)
    return _crash_error(job, nodes, f"Dask gave up on it ({type(exc).__name__}: {exc})")


def _crash_error(task: str, nodes: tuple[str, ...], why: str) -> NodeError:
    where = f"node '{nodes[0]}'" if len(nodes) == 1 else f"task '{task}' (nodes {list(nodes)})"
    return NodeError.from_message(
        nodes[0],
        task,
        f"{where} failed: {why}. Its process crashed while running it (a segfault, os._exit, "
        "running out of memory), so it is not run again; run the graph with the threads "
        "executor to see the crash in this process",
    )


class ClusterErrors:
    """Turn "the scheduler is gone" (cancelled futures, closed comms) into one clear error.

    Once the client has lost its scheduler every later call raises the same error at once:
    the scheduler's state (weights, placements) is gone with it; make a new executor.
    ``state`` is the executor's `calls.Session` (its ``client``, ``address``, ``lost``).
    """

    def __init__(self, state: Any):
        self.state = state

    def __enter__(self) -> None:
        if self.state.lost is not None:
            raise SchedulerUnreachableError(self.state.lost)

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, OSError | CancelledError | KeyError):
            return False
        if isinstance(exc, SchedulerUnreachableError) or self.state.client.status == "running":
            return False
        self.state.lost = (
            f"DaskExecutor: lost the Dask scheduler at {self.state.address} (client "
            f"{self.state.client.status}); the cluster is gone: create a new DaskExecutor"
        )
        raise SchedulerUnreachableError(self.state.lost) from exc
