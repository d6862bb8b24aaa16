"""Many calls of the `DaskExecutor` in flight at once: `map`'s chunks, a split plan's shards.

What it decides
---------------
* **Chunks.** `map` puts several inputs into one call, whose jobs run them one after another
  (`auto_chunk`: about `CHUNK_WORK` seconds of the plan's estimated work, at most `MAX_CHUNK`
  inputs). Dask's own cost per task, measured at 20-25 ms of client, scheduler and worker CPU
  on 2 shared cores, is paid per task, not per input: one input per task spent a fifth of the
  CPU on Dask.
* **A window.** `map` keeps up to ``window`` inputs in flight (default: two chunks per worker
  thread), pulls inputs only as results are taken (an endless iterable is fine), and yields
  outputs in input order, finishing the oldest call first; a call that lost a worker runs
  again (`calls.finish_started`). Leaving early, or an error, cancels every call in flight.
* **Shards.** A split plan's shards (`graphexec.executors.shards`) are one call each of the
  whole plan, all submitted before the first is awaited, so they spread over the workers.

The call tree::

    DaskExecutor.map -> map_calls(session, plan, inputs, ...)
      chunks(inputs) -> calls.start_call per chunk, while the window has room
      _yield_oldest  -> calls.finish_started, then one output per input of the chunk
    DaskExecutor._run_shards -> run_shards(session, plan, shards, events)
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from ...graph import Graph
from ...plans import Plan
from ...profile import TaskEvent
from ..base import bind_inputs, collect_outputs
from .calls import Call, CallOptions, Session, call_modes, finish_call, finish_started, start_call
from .faults import ClusterErrors
from .jobs import reject_cuda

__all__ = ["CHUNK_WORK", "MAX_CHUNK", "auto_chunk", "chunks", "map_calls", "run_shards"]

#: `map` puts about this many seconds of the plan's estimated work into one Dask task. Dask's
#: own cost per task (client, scheduler and worker CPU together) measured 20-25 ms on a
#: 2-core VM (benchmarks/results/dask.md): under a tenth of a chunk.
CHUNK_WORK = 0.25
#: ... and at most this many inputs (a chunk's inputs are held until it is done).
MAX_CHUNK = 8


def auto_chunk(plan: Plan, threads: int, window: int | None, length: int | None) -> int:
    """Inputs per Dask task for `map`: `CHUNK_WORK` seconds of estimated work, at most
    `MAX_CHUNK`, and small enough to leave two chunks per worker thread of ``window`` and of
    ``length`` inputs (when known), so every worker keeps a chunk queued behind its current one.
    """
    work = sum(t.cost for t in plan.tasks.values())
    size = math.ceil(CHUNK_WORK / work) if work > 0 else MAX_CHUNK
    per_thread = max(2, 2 * threads)
    for bound in (window, length):
        if bound is not None:
            size = min(size, bound // per_thread)
    return max(1, min(MAX_CHUNK, size))


def chunks(graph: Graph, inputs: Iterable[Any], size: int) -> Iterator[list[dict[str, Any]]]:
    """Bound graph inputs, ``size`` items at a time, pulled from ``inputs`` only when asked."""
    it = iter(inputs)
    while batch := list(itertools.islice(it, size)):
        envs = []
        for item in batch:
            env = bind_inputs(graph, item if isinstance(item, tuple) else (item,), {})
            reject_cuda("a graph input", env)
            envs.append(env)
        yield envs


def map_calls(
    s: Session,
    plan: Plan,
    inputs: Iterable[Any],
    window: int | None,
    chunk: int | None,
    progress: bool,
    whole: bool,
) -> Iterator[Any]:
    """`DaskExecutor.map` (see there): each input's outputs, in input order.

    ``whole``: each chunk is one job running the whole plan (a replicated plan, unsplit).

    Raises
    ------
    ValueError
        If ``chunk`` or ``window`` is below 1.
    """
    threads = sum(w.nthreads for w in s.placer.live())
    length = len(inputs) if hasattr(inputs, "__len__") else None
    size = chunk or auto_chunk(plan, threads, window, length)
    if size < 1 or (window is not None and window < 1):
        raise ValueError(f"map: chunk and window must be >= 1 (chunk={chunk}, window={window})")
    calls = max(1, (window or max(2, 2 * threads) * size) // size)  # chunks in flight
    bar = _progress_bar(inputs, progress)
    flight: deque[tuple[Call, list[dict[str, Any]]]] = deque()
    opts = CallOptions(False, "dataflow", whole, call_modes())  # every job of a chunk at once
    try:
        for envs in chunks(plan.graph, inputs, size):
            flight.append((start_call(s, plan, envs, opts), envs))
            while len(flight) >= calls:
                yield from _yield_oldest(s, plan, flight, bar, opts)
        while flight:
            yield from _yield_oldest(s, plan, flight, bar, opts)
    finally:
        for call, _ in flight:
            call.cancel()
        if bar is not None:
            bar.close()


def _yield_oldest(s: Session, plan: Plan, flight, bar, opts: CallOptions) -> Iterator[Any]:
    call, envs = flight.popleft()
    finish_started(s, plan, call, envs, opts)  # run again if a worker was lost
    for env in envs:
        if bar is not None:
            bar.update(1)
        yield collect_outputs(plan.graph, env)


def run_shards(
    s: Session, plan: Plan, shards: list[tuple[Any, ...]], events: list[TaskEvent] | None
) -> list[Any]:
    """Each shard's whole plan as one job (as `map` runs a chunk), all submitted before the
    first is awaited; each shard's outputs, in shard order."""
    envs = [bind_inputs(plan.graph, shard, {}) for shard in shards]
    for env in envs:
        reject_cuda("a graph input", env)
    opts = CallOptions(events is not None, "dataflow", True, call_modes())
    calls: list[Call] = []
    try:
        for env in envs:
            calls.append(start_call(s, plan, [env], opts))
        for call, env in zip(calls, envs, strict=True):
            if events is None:
                finish_started(s, plan, call, [env], opts)
            else:  # profiled: the shard's worker events too (a lost worker is not re-run)
                with ClusterErrors(s):
                    finish_call(s, call, [env], events)
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    return [collect_outputs(plan.graph, env) for env in envs]


def _progress_bar(inputs: Any, enabled: bool) -> Any:
    """A tqdm bar of inputs done, or None (not asked for, or tqdm is not installed)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    total = len(inputs) if hasattr(inputs, "__len__") else None
    return tqdm(total=total, desc="graphexec dask map", unit=" input")
