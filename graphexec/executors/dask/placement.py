"""Where the `DaskExecutor` keeps each node's weights, and on which worker each job runs.

What it decides
---------------
* **One Dask key per (node, worker), each with exactly one replica.** Dask's active memory
  manager (AMM, on by default) drops replicas of data no task is waiting for, so weights
  scattered with ``broadcast=True`` end up on one worker within seconds and every job follows
  that copy. `WeightStore` instead scatters a node to each worker that needs it under a key of
  its own (``weights-<node>-<token>-<i>``). A key with one replica is never "reduced", so each
  worker keeps its copy for as long as the executor holds the future, whatever the AMM does.
* **Jobs run where their weights are.** Every job is submitted with ``workers=[address]`` (a
  strict restriction, which work stealing respects) and reads the copies on that worker. If
  that worker dies, the copies it held are forgotten by the scheduler and the job is
  cancelled, never left waiting for a worker that will not come: the executor re-places and
  re-runs the call.
* **Placements.**

  - ``"replicate"`` (default): every live worker holds every node; each call spreads its jobs
    level by level, heaviest first, on the worker with the least work in that level
    (`spread`), starting from a worker that rotates per call so single-job levels and `map`
    inputs take turns.
  - ``"shard"``: each job's nodes live on ``copies`` workers (`shard`): levels in order,
    heaviest job first, on the worker with the fewest weight bytes among those not yet used
    in that level (same-level heavy branches land apart; a chain alternates), skipping
    workers it would not fit. When a worker dies, only its jobs are placed again, from the
    client's copy; the others stay.
  - ``{node: address}``: pinned by hand (`pin`); unpinned jobs are sharded around them.

* **Memory pre-flight.** Before anything is sent, the weights a worker would hold are checked
  against ``FIT`` x its ``memory_limit`` (Dask's default pause threshold: above it a worker
  stops running tasks). Replicated weights that do not fit raise `PlacementError` naming the
  biggest nodes and suggesting ``placement="shard"``. Each graph input is checked the same
  way against the workers that read it (`check_input_fits`).

A job is the unit of placement: a fused chain is one task, so it lives on one worker. Plan with
``fuse_chains=False`` to shard a chain layer by layer.
"""

from __future__ import annotations

import re
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import distributed
import torch

from ...graph import Graph, Node, state_tensors
from ...plans import Plan
from .jobs import Job, fingerprint, reject_cuda, state_nbytes
from .wire import NodeCopy

__all__ = [
    "FIT",
    "PlacementError",
    "WeightStore",
    "Worker",
    "WorkerImportError",
    "check_input_fits",
]

#: Weights may fill at most this fraction of a worker's ``memory_limit``.
FIT = 0.8


class WorkerImportError(ImportError):
    """A worker cannot import a module that a node's function or class lives in."""


_NO_MODULE = re.compile(r"No module named '([^']+)'")


def _missing_module(exc: BaseException) -> str | None:
    """The module a worker could not import, from Dask's error (a bare ``Exception`` carrying
    the worker's ``ModuleNotFoundError`` as text), else None."""
    found = _NO_MODULE.search(str(exc))
    return found.group(1) if found else None


def _modules_of(fn: Any) -> set[str]:
    """Modules whose classes or functions pickling ``fn`` refers to by name."""
    if isinstance(fn, torch.nn.Module):
        return {type(m).__module__ for m in fn.modules()}
    return {getattr(fn, "__module__", None) or type(fn).__module__}


def _import_error(worker: str, module: str, nodes: Mapping[str, Node]) -> WorkerImportError:
    top = module.split(".")[0]
    users = sorted(n for n, node in nodes.items() if any(
        m == module or m.split(".")[0] == top for m in _modules_of(node.fn)))  # fmt: skip
    who = ", ".join(f"'{n}'" for n in users) or "a node"
    return WorkerImportError(
        f"DaskExecutor: worker {worker} cannot import module '{module}', which node {who} "
        f"needs (the class or function is sent by name). Install '{top}' on the workers, send "
        f"the file with ex.client.upload_file('{top}.py'), or define the class in the script "
        "you run (its __main__ is sent by value)"
    )


class PlacementError(ValueError):
    """A placement that cannot work: unknown worker or node, or weights that do not fit."""


@dataclass(frozen=True)
class Worker:
    """A worker as the scheduler describes it."""

    address: str
    host: str
    nthreads: int
    memory_limit: int  # bytes; 0 when the worker has no limit


def workers_of(info: Mapping[str, Any]) -> list[Worker]:
    """The workers of ``client.scheduler_info()``, sorted by address (reproducible)."""
    return [
        Worker(a, w.get("host", a), int(w.get("nthreads", 1)), int(w.get("memory_limit") or 0))
        for a, w in sorted(info.get("workers", {}).items())
    ]


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def node_bytes(plan: Plan, names: Iterable[str]) -> int:
    return sum(state_nbytes(plan.graph.nodes[n].fn) for n in set(names))


def check_replicated_fit(plan: Plan, workers: Sequence[Worker]) -> None:
    """Raise `PlacementError` if the plan's weights do not fit the smallest worker."""
    limits = [w for w in workers if w.memory_limit]
    if not limits:
        return
    small = min(limits, key=lambda w: w.memory_limit)
    sizes = {n: state_nbytes(node.fn) for n, node in plan.graph.nodes.items() if n in plan.task_of}
    total = sum(sizes.values())
    if total <= FIT * small.memory_limit:
        return
    biggest = sorted(sizes, key=lambda n: (-sizes[n], n))[:3]
    raise PlacementError(
        f"DaskExecutor: graph '{plan.graph.name}' has {_mib(total)} of weights; replicated, "
        f"every worker holds them all, but worker {small.address} has memory_limit "
        f"{_mib(small.memory_limit)} (weights may use {FIT:.0%} of it). Biggest nodes: "
        + ", ".join(f"'{n}' ({_mib(sizes[n])})" for n in biggest)
        + '. Use placement="shard" to spread the nodes over the workers, or bigger workers.'
    )


def check_input_fits(name: str, size: int, readers: Sequence[Worker]) -> None:
    """Raise `PlacementError` if graph input ``name`` (``size`` bytes) does not fit ``FIT`` x
    the ``memory_limit`` of a worker that reads it: sent anyway, it got the worker restarted by
    its nanny and the call failed with a closed connection."""
    for w in readers:
        if w.memory_limit and size > FIT * w.memory_limit:
            raise PlacementError(
                f"DaskExecutor: graph input '{name}' is {_mib(size)}, and worker {w.address} "
                f"that reads it has memory_limit {_mib(w.memory_limit)} (an input may use "
                f"{FIT:.0%} of it): split the batch (map() over smaller inputs), or use "
                "bigger workers"
            )


def spread(
    jobs: Mapping[str, Job], candidates: Mapping[str, Sequence[str]], turn: int
) -> dict[str, str]:
    """Pick one worker per job for one call: per level, heaviest first, least loaded."""
    chosen: dict[str, str] = {}
    by_level: dict[int, list[Job]] = {}
    for job in jobs.values():
        by_level.setdefault(job.level, []).append(job)
    for level in sorted(by_level):
        load: dict[str, float] = {}
        for job in sorted(by_level[level], key=lambda j: -j.cost):
            options = list(candidates[job.name])
            k = turn % len(options)
            options = options[k:] + options[:k]  # ties go to the next worker in turn
            best = min(options, key=lambda w: load.get(w, 0.0))
            load[best] = load.get(best, 0.0) + max(job.cost, 1e-9)
            chosen[job.name] = best
    return chosen


@dataclass
class Shards:
    """A sharded plan's jobs -> workers holding their nodes. Mutated under the executor's lock."""

    holders: dict[str, tuple[str, ...]] = field(default_factory=dict)


def shard(
    plan: Plan,
    jobs: Mapping[str, Job],
    workers: Sequence[Worker],
    copies: int,
    shards: Shards,
    pinned: Mapping[str, str] | None = None,
) -> Shards:
    """Place (or repair) ``shards`` on the live ``workers``; see the module docstring."""
    live = {w.address: w for w in workers}
    if not live:
        raise PlacementError("DaskExecutor: no worker left in the cluster")
    copies = min(copies, len(live))
    sizes = {j: node_bytes(plan, job.nodes) for j, job in jobs.items()}
    load = dict.fromkeys(live, 0)
    for j, held in list(shards.holders.items()):
        kept = tuple(w for w in held if w in live)
        shards.holders[j] = kept
        for w in kept:
            load[w] += sizes.get(j, 0)
    used: dict[int, set[str]] = {}
    for j, job in sorted(jobs.items(), key=lambda kv: (kv[1].level, -sizes[kv[0]], kv[0])):
        if pinned and j in pinned:
            shards.holders[j] = (pinned[j],)
            continue
        held = list(shards.holders.get(j, ()))
        level_used = used.setdefault(job.level, set())
        level_used.update(held)
        while len(held) < copies:
            w = _least_loaded(live, load, sizes[j], set(held), level_used, j)
            held.append(w)
            load[w] += sizes[j]
            level_used.add(w)
        shards.holders[j] = tuple(held)
    return shards


def _least_loaded(live, load, size: int, taken: set[str], level_used: set[str], job: str) -> str:
    fits = [
        a
        for a, w in live.items()
        if a not in taken and (not w.memory_limit or load[a] + size <= FIT * w.memory_limit)
    ]
    if not fits:
        raise PlacementError(
            f"DaskExecutor: job '{job}' needs {_mib(size)} of weights and no worker has room "
            f"for it (weights may use {FIT:.0%} of a worker's memory_limit); add workers, or "
            "plan with fuse_chains=False so a fused chain can be split over workers"
        )
    return min(fits, key=lambda a: (a in level_used, load[a], a))


def pin(
    plan: Plan, jobs: Mapping[str, Job], mapping: Mapping[str, str], workers: Sequence[Worker]
) -> dict[str, str]:
    """Jobs -> the worker their nodes are pinned to; raise `PlacementError` on a bad mapping."""
    known = {w.address for w in workers}
    by_short = {a.split("://", 1)[-1]: a for a in known}
    unknown_nodes = sorted(set(mapping) - set(plan.graph.nodes))
    if unknown_nodes:
        raise PlacementError(
            f"DaskExecutor: placement names node(s) {unknown_nodes} that graph "
            f"'{plan.graph.name}' does not have"
        )
    resolved = {}
    for node, address in mapping.items():
        full = address if address in known else by_short.get(address.split("://", 1)[-1])
        if full is None:
            raise PlacementError(
                f"DaskExecutor: node '{node}' is pinned to worker {address}, which is not in the "
                f"cluster (workers: {', '.join(sorted(known)) or 'none'})"
            )
        resolved[node] = full
    out = {}
    for j, job in jobs.items():
        where = {resolved[n] for n in job.nodes if n in resolved}
        if len(where) > 1:
            raise PlacementError(
                f"DaskExecutor: task '{j}' runs nodes pinned to different workers "
                f"({', '.join(sorted(where))}); plan with fuse_chains=False to split it"
            )
        if where:
            out[j] = where.pop()
    return out


@dataclass
class _Held:
    fp: Any
    copies: dict[str, distributed.Future]  # worker address -> future of its copy


class WeightStore:
    """Each node's copies on the workers, as futures of single-replica keys (see above).

    Thread-safe: executors shared by threads scatter each (node, worker) copy once.
    """

    def __init__(self, client: distributed.Client):
        self.client = client
        self._held: weakref.WeakKeyDictionary[Node, _Held] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.scattered_nbytes = 0  # weight bytes of each node version, counted once
        self.scatters = 0  # (node, worker) copies sent

    def futures(
        self, graph: Graph, wanted: Mapping[str, Iterable[str]]
    ) -> dict[tuple[str, str], distributed.Future]:
        """Futures of node ``n``'s copy on worker ``w`` for each ``w`` in ``wanted[n]``.

        Copies that are missing, lost with their worker, or of an older version of the node
        (its `fingerprint` changed) are scattered now, from the client's node.
        """
        with self._lock:
            out: dict[tuple[str, str], distributed.Future] = {}
            missing: dict[str, dict[str, Node]] = {}
            for name, where in wanted.items():
                held = self._current(graph.nodes[name], name)
                for w in where:
                    fut = held.copies.get(w)
                    if fut is not None and fut.status == "finished":
                        out[(name, w)] = fut
                    else:
                        missing.setdefault(w, {})[name] = graph.nodes[name]
            # Every node is packed once, and all before anything is sent: one that cannot be
            # sent raises UnsendableNodeError here, with nothing half-placed.
            packed = {name: NodeCopy.of(node) for nodes in missing.values()
                      for name, node in nodes.items()}  # fmt: skip
            for w, nodes in missing.items():
                out.update(self._scatter(w, {n: packed[n] for n in nodes}))
            return out

    def _current(self, node: Node, name: str) -> _Held:
        fp = fingerprint(node.fn)
        held = self._held.get(node)
        if held is None or held.fp != fp:
            reject_cuda(f"a parameter of node '{name}'", list(state_tensors(node.fn)))
            held = _Held(fp, {})
            self._held[node] = held
            self.scattered_nbytes += state_nbytes(node.fn)
        else:
            held.copies = {w: f for w, f in held.copies.items() if f.status == "finished"}
        return held

    def _scatter(self, worker: str, copies: Mapping[str, NodeCopy]):
        token = uuid.uuid4().hex[:8]
        keys = {f"weights-{n}-{token}": n for n in copies}
        nodes = {n: c.node for n, c in copies.items()}
        try:
            sent = self.client.scatter(
                {k: copies[n] for k, n in keys.items()}, workers=[worker], hash=False
            )
        except Exception as exc:
            module = _missing_module(exc)
            if module is None:
                raise
            raise _import_error(worker, module, nodes) from None
        for k, n in keys.items():
            self._held[nodes[n]].copies[worker] = sent[k]
            self.scatters += 1
            yield (n, worker), sent[k]

    def holders(self, node: Node) -> tuple[str, ...]:
        held = self._held.get(node)
        return tuple(sorted(held.copies)) if held is not None else ()

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
