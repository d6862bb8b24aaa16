"""The `DaskExecutor`'s placement state: live workers, jobs per plan, shards, weight copies.

What it decides
---------------
* **Which workers are live.** The scheduler's list is asked for at most every
  ``WORKERS_TTL`` seconds (one round trip; calls in between reuse it), so a call may be placed
  on a worker that has just died. That costs a re-run, never a hang nor an error: its jobs
  read copies that died with it, so they are cancelled, and a scatter to it fails; either way
  the executor calls `Placer.settle` and places the call again (`faults`). `settle` asks
  the scheduler for its list and then asks every listed worker to answer (one broadcast
  through the scheduler, which must reach the workers anyway); a worker that does not answer
  is left out until the scheduler drops it, or for ``SUSPECT_FOR`` seconds (a worker that
  comes back under the same address is used again).
* **No worker listed** (a nanny restarting them all) waits up to the executor's ``timeout``
  for one to come back, then raises `PlacementError`.
* **Per call.** `Placer.place` maps each job to one worker (`placement.spread` over the
  workers that hold its nodes) and asks the `WeightStore` for the copies there, sending the
  missing ones. A sharded plan's `Shards` are placed once and repaired when workers die.

State shared by threads calling one executor (``_turn``, the shards) changes under ``_lock``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import distributed

from ...plans import Plan
from ..base import IdCache
from .jobs import Job, make_jobs, state_nbytes, whole_job
from .placement import (
    PlacementError,
    Shards,
    WeightStore,
    Worker,
    check_replicated_fit,
    pin,
    shard,
    spread,
    workers_of,
)

__all__ = ["Placer", "SUSPECT_FOR", "WORKERS_TTL", "scheduler_identity"]

#: How long the client trusts its list of workers before asking the scheduler again.
WORKERS_TTL = 1.0
#: How long a listed worker that did not answer `Placer.settle` is left out at most.
SUSPECT_FOR = 30.0


class Placer:
    """Where the jobs of each call run, for one executor (see the module docstring)."""

    def __init__(
        self,
        client: distributed.Client,
        placement: str | Mapping[str, str],
        copies: int,
        timeout: float = 10.0,
    ):
        self.check(placement)
        self.client = client
        self.timeout = timeout  # how long to wait for a worker when none is listed
        self.kind = placement if isinstance(placement, str) else "pinned"
        self.pinned = dict(placement) if isinstance(placement, Mapping) else None
        self.copies = copies
        self.store = WeightStore(client)
        self.jobs = IdCache(make_jobs)
        self.whole = IdCache(whole_job)
        self._shards: IdCache[Plan, Shards] = IdCache(lambda plan: Shards())
        self._fits: IdCache[Plan, set] = IdCache(lambda plan: set())
        self._lock = threading.Lock()
        self._turn = 0
        self._workers: tuple[float, list[Worker]] = (-1.0, [])
        self._suspects: dict[str, float] = {}  # listed but did not answer -> until when

    @staticmethod
    def check(placement: Any) -> None:
        """Raise ValueError unless ``placement`` is "replicate", "shard" or a mapping."""
        if not isinstance(placement, Mapping) and placement not in ("replicate", "shard"):
            raise ValueError(f"placement must be 'replicate', 'shard' or a mapping: {placement!r}")

    def live(self, refresh: bool = False) -> list[Worker]:
        """The cluster's workers; raise `PlacementError` when none is left."""
        stamp, workers = self._workers
        if refresh or time.monotonic() - stamp > WORKERS_TTL:
            workers = self._without_suspects(workers_of(scheduler_identity(self.client)))
            self._workers = (time.monotonic(), workers)
        return workers or self._await_one()

    def _await_one(self) -> list[Worker]:
        """Workers once one is back (a nanny restarting them all), within ``timeout``."""
        try:
            self.client.wait_for_workers(1, timeout=self.timeout)
        except TimeoutError:
            address = self.client.scheduler.address
            raise PlacementError(
                f"DaskExecutor: no worker left in the cluster at {address} "
                f"(none came back within {self.timeout:g} s)"
            ) from None
        workers = self._without_suspects(workers_of(scheduler_identity(self.client)))
        self._workers = (time.monotonic(), workers)
        if not workers:
            address = self.client.scheduler.address
            raise PlacementError(f"DaskExecutor: no worker answers in the cluster at {address}")
        return workers

    def settle(self) -> list[Worker]:
        """After a call lost a worker: the workers the scheduler lists that answer now."""
        listed = workers_of(scheduler_identity(self.client))
        if listed:
            try:
                answers = self.client.run(
                    os.getpid, workers=[w.address for w in listed], on_error="return"
                )
            except Exception:  # a scheduler that refuses `run`: trust its list
                answers = {w.address: 0 for w in listed}
            now = time.monotonic()
            for w in listed:
                if isinstance(answers.get(w.address), BaseException) or w.address not in answers:
                    self._suspects.setdefault(w.address, now + SUSPECT_FOR)
        workers = self._without_suspects(listed)
        self._workers = (time.monotonic(), workers)
        return workers or self._await_one()

    def _without_suspects(self, listed: list[Worker]) -> list[Worker]:
        """``listed`` less the suspects still listed; forget those the scheduler dropped."""
        now, names = time.monotonic(), {w.address for w in listed}
        self._suspects = {a: t for a, t in self._suspects.items() if a in names and t > now}
        return [w for w in listed if w.address not in self._suspects]

    def holders(self, plan: Plan) -> dict[str, tuple[str, ...]]:
        """``{node: workers holding it}`` for every node with parameters (placing if need be)."""
        jobs = self.jobs(plan)
        candidates = self._candidates(plan, jobs, self.live(refresh=True))
        where: dict[str, set[str]] = {}
        for j, job in jobs.items():
            for n in job.nodes:
                where.setdefault(n, set()).update(candidates[j])
        nodes = plan.graph.nodes
        return {
            n: tuple(sorted(ws)) for n, ws in sorted(where.items()) if state_nbytes(nodes[n].fn)
        }

    def _candidates(self, plan: Plan, jobs, workers: list[Worker]) -> dict[str, tuple[str, ...]]:
        """Job -> workers that hold (or will hold) its nodes."""
        if self.kind == "replicate":
            key = tuple(w.address for w in workers)
            if key not in self._fits(plan):
                check_replicated_fit(plan, workers)
                self._fits(plan).add(key)
            return dict.fromkeys(jobs, key)
        pinned = pin(plan, jobs, self.pinned, workers) if self.pinned is not None else None
        with self._lock:  # threads sharing the executor repair one placement
            shards = shard(plan, jobs, workers, self.copies, self._shards(plan), pinned)
            return dict(shards.holders)

    def place(
        self, plan: Plan, whole: bool
    ) -> tuple[Mapping[str, Job], dict[str, str], dict[tuple[str, str], Any], dict[str, Worker]]:
        """Jobs of one call, job -> worker, the futures of the nodes' copies, live workers."""
        workers = self.live()
        split = self.jobs(plan)
        candidates = self._candidates(plan, split, workers)
        jobs = split
        if whole:  # the whole plan as one job: any worker holding every node
            jobs = self.whole(plan)
            common = set.intersection(*(set(c) for c in candidates.values()))
            candidates = dict.fromkeys(jobs, tuple(sorted(common)))
        with self._lock:
            self._turn += 1
            turn = self._turn
        where = spread(jobs, candidates, turn)
        wanted: dict[str, set[str]] = {}
        for j, job in jobs.items():
            for n in job.nodes:
                wanted.setdefault(n, set()).update(candidates[j])
        nodes = self.store.futures(plan.graph, wanted)
        return jobs, where, nodes, {w.address: w for w in workers}

    def clear(self) -> None:
        self.store.clear()
        self.jobs.clear()
        self.whole.clear()
        self._shards.clear()
        self._fits.clear()


def scheduler_identity(client: Any) -> Mapping[str, Any]:
    """The scheduler's identity with every worker, fetched now. ``client.scheduler_info()``
    returns a cache that Dask's periodic refresh overwrites with totals only (no workers):
    read between the two, a live cluster looked empty ("no worker left") about one demo run
    in three."""
    return client.sync(client.scheduler.identity, n_workers=-1)
