"""Run a plan on a Dask cluster (the real ``dask.distributed``): weights once, activations P2P.

What it decides
---------------
* **Which cluster** (`connect`). ``client=`` is used as given and never closed. Otherwise
  ``address=``, or Dask's configuration (``scheduler-address`` / ``DASK_SCHEDULER_ADDRESS``),
  names a scheduler to join, and failing to reach it within ``timeout`` raises
  `SchedulerUnreachableError` naming the address. With none of these, an embedded
  ``LocalCluster`` is started (one 1-thread worker process per core, free ports) and closed by
  `close`, by ``with``, or by a finalizer should the executor be dropped first.
* **What a Dask task is** (`jobs`). One *job* per plan task, keyed
  ``f"{task}-{call token}"`` so the dashboard reads like the model; inline tasks run inside
  the jobs that read them.
* **Where weights live and jobs run** (`placement`, `placer`). Each node is scattered once per
  worker that needs it, under a key of its own, so Dask's active memory manager cannot drop
  "spare" replicas; each job is pinned to a worker holding its nodes. ``placement=`` chooses
  ``"replicate"`` (every worker holds every node; jobs of a call spread over the workers),
  ``"shard"`` (each job's nodes on ``copies`` workers) or ``{node: address}``. A node is sent
  again only when its fingerprint changes or its copy was lost with a worker.
* **What is sent per call.** Job specs (a few hundred bytes each) and the graph inputs, views
  compacted first: embedded in the job that reads them, sent once as a task of their own when
  several jobs read them, or scattered (to the worker of their first reader) above
  `SCATTER_ABOVE`. Intermediate values go worker to worker; only graph outputs come back.
* **Schedules.** ``"dataflow"`` submits every job at once; ``"levels"`` waits for each depth
  level. `map` pipelines: with a replicated plan each chunk of inputs is one job running the
  whole plan; with a sharded one each chunk's jobs follow the shards, so chunk *i + 1* runs
  its first stage while chunk *i* is in its second, on another worker. Chunks (`auto_chunk`:
  about `CHUNK_WORK` seconds of work each) exist because Dask's own cost per task, measured at
  20-25 ms of client, scheduler and worker CPU on 2 shared cores, is paid per task, not per
  input: one input per task spent a fifth of the CPU on Dask.
* **Failures.** A node that raises becomes a `NodeError` naming the node with the remote
  traceback; jobs are submitted with ``retries=0``, so a node never runs again because it
  raised. A worker lost mid-call is re-run by the scheduler when it can; when data only the
  client has (weights, scattered inputs) was lost with it, or the call met a worker that had
  just died (a scatter to it), this executor settles the worker list, places the lost copies
  again and re-runs the call, up to ``retries`` times, then raises `WorkerLostError`; a node
  whose worker dies under it twice in a call is named in a `NodeError` (`faults`). A
  scheduler that dies makes the call, and every later one, raise `SchedulerUnreachableError`.
* **Modes and devices.** Jobs run under the caller's inference mode and autocast with grad off
  (autograd does not cross processes); CUDA tensors are rejected with a clear error.

The call tree::

    Executor.run -> DaskExecutor._execute(plan, env, events)
      -> calls.run_call               again after a lost worker (faults, Placer.settle)
      -> submit_call
           Placer.place               jobs (IdCache per plan) -> workers; weight copies to send
           _send_inputs               compact, embed / submit / scatter graph inputs
           client.submit per job      worker: jobs.run_job -> run_task per task
      -> finish_call                  gather outputs (first error), pop worker events
    DaskExecutor.map -> pipeline.map_calls: start_call per chunk ... finish_started, oldest
                                  first (a split plan's shards: pipeline.run_shards)
    DaskExecutor.map_blocks / map_partitions -> data: lazy Dask collections, one task per
                                  block on the worker holding it (blocks), weights read there

The modules; each imports only modules listed below it (nothing imports `executor` or this
package's face)::

    executor     DaskExecutor: settings, properties, lifetime; every call goes below
    data         map_blocks / map_partitions: checks, the probe, the lazy collections
    blocks       what a block task runs on its worker (weights read there, or fetched)
    pipeline     many calls in flight: map's chunks and window, a split plan's shards
    calls        one call: submit its jobs, wait, gather (Session: what calls share)
    faults       lost workers, crashes, a scheduler gone: which error, or run again
    placer       where jobs run and weights live, for the live workers (Placer)
    placement    the placement rules and the weight store (scatter once per worker)
    jobs         what one Dask task runs on a worker, and what travels with it
    wire         how a node crosses to a worker (pickled code and state)
    connect      the cluster: embedded LocalCluster or a scheduler to join; TLS; probing
    spawn_guard  a script without a __main__ guard gets one clear error

Trust: Dask moves functions and data with pickle. Connect only to clusters you trust and use
``security=`` (``distributed.Security``) for TLS between client, scheduler and workers.
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401
except ImportError as exc:  # pragma: no cover - dask is a dependency, but say what to install
    raise ImportError(
        "graphexec's DaskExecutor needs dask.distributed: pip install 'dask[distributed]'"
    ) from exc

from .calls import EMBED_BELOW, SCATTER_ABOVE
from .connect import SchedulerUnreachableError, TLSConfigError
from .executor import DaskExecutor
from .faults import WorkerLostError
from .pipeline import CHUNK_WORK, MAX_CHUNK
from .placement import PlacementError, WorkerImportError
from .wire import UnsendableNodeError

__all__ = [
    "CHUNK_WORK",
    "DaskExecutor",
    "EMBED_BELOW",
    "MAX_CHUNK",
    "PlacementError",
    "SCATTER_ABOVE",
    "SchedulerUnreachableError",
    "TLSConfigError",
    "UnsendableNodeError",
    "WorkerImportError",
    "WorkerLostError",
]
