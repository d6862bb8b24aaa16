"""What a block task of `DaskExecutor.map_blocks` / `map_partitions` runs on its worker.

`graphexec.executors.dask.data` builds the collections on the client (its docstring says what
is decided there); each of their tasks calls `run_block` or `run_partition` here, on the worker
holding the block, with a `Spec`: the plan's tasks and how to find the node copies on that
worker (a few kB, no weights). The block's rows run through `jobs.run_job`, as a job of
`DaskExecutor.run` does: the worker's torch threads, the caller's inference mode and autocast
(taken when the collection was built), grad off.

* **Weights are read where they are** (`weights_here`): from the worker's memory, under the
  keys the placement gave them. A worker that joined later (a nanny's replacement for a
  killed one) fetches one copy from a peer on its first block and keeps it for that
  collection (`_FETCHED`): still once per worker, never from the client.
* **Errors name the block** (or the partition) and the node or the input: a node's error
  comes back as a `NodeError` rebuilt with the block in its message.

Worker-side state: `_FETCHED` (weights a worker fetched from a peer, per collection) is shared
by the worker's task threads, hence `_FETCHED_LOCK`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import distributed
import numpy as np
import torch

from ...errors import NodeError
from ...graph import Ref
from ...plans import Task
from .jobs import JobEnv, RemoteNodeError, run_job
from .wire import NodeCopy

__all__ = ["Partitions", "Spec", "as_tensor", "pick", "run_block", "run_partition"]


# -- what every block task carries------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """What a block task needs besides its block: a few kB, no weights (those stay on workers)."""

    graph: str
    token: str  # this collection's: keys `_FETCHED`
    tasks: tuple[Task, ...]
    inputs: tuple[str, ...]  # graph inputs, in the order the blocks come
    wanted: tuple[str, ...]  # values `run_job` returns (graph outputs that are not inputs)
    leaves: tuple[Ref, ...]  # the graph's output refs, in pytree order
    rows: tuple[tuple[int, ...], ...]  # each input's row shape
    keys: Mapping[str, tuple[str, ...]]  # worker address -> keys of its node copies, in order
    envs: Mapping[str, JobEnv]  # worker address -> how its jobs run


# -- running rows on the worker ------------------------------------------------------------------
def pick(outs: tuple, j: int) -> np.ndarray:
    return outs[j]


def run_block(block_id: tuple[int, ...], *blocks: np.ndarray, spec: Spec) -> tuple:
    """On a worker: run the plan over one block of rows; return each output as numpy."""
    where = f"block {block_id[0]} of graph '{spec.graph}'"
    env = {}
    for name, shape, block in zip(spec.inputs, spec.rows, blocks, strict=True):
        block = np.asarray(block)
        if tuple(block.shape[1:]) != shape:
            raise ValueError(
                f"{where}: input '{name}' has rows of shape {tuple(block.shape[1:])}, the "
                f"array said {shape}"
            )
        env[name] = as_tensor(block)
    return _run_rows(spec, env, where)


def as_tensor(block: np.ndarray) -> torch.Tensor:
    """A block as a tensor; copied only when torch cannot share it (read-only, byte order)."""
    native = block.dtype.newbyteorder("=")
    if block.dtype != native or not block.flags.writeable or not block.flags.c_contiguous:
        block = np.array(block, dtype=native, order="C", copy=True)
    return torch.from_numpy(block)


def _run_rows(spec: Spec, env: dict[str, torch.Tensor], where: str) -> tuple:
    """Run the whole plan on this worker over ``env``; outputs in `Spec.leaves` order."""
    nodes, job_env = weights_here(spec, where)
    try:
        (values,) = run_job(spec.tasks, nodes, [env], {}, job_env, spec.wanted)
    except RemoteNodeError as err:
        raise NodeError.from_message(
            err.node, err.task, f"{where}: {err.message}\n\nRemote traceback (worker "
            f"{err.where}):\n{err.tb.rstrip()}"
        ) from None  # fmt: skip
    values.update(env)
    rows = next(iter(env.values())).shape[0]
    out = []
    for ref in spec.leaves:
        leaf = ref.resolve(values[ref.node])
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0 or leaf.shape[0] != rows:
            shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise NodeError(
                ref.node, ValueError(f"{where}: output '{ref}' gave {shape} for {rows} rows")
            )
        out.append(leaf.detach().cpu().numpy())
    return tuple(out)


# -- weights on the worker -----------------------------------------------------------------------
_FETCHED: OrderedDict[str, list[NodeCopy]] = OrderedDict()  # collection token -> copies
_FETCHED_LOCK = threading.Lock()
_FETCHED_KEEP = 4  # collections whose fetched copies a worker keeps


def weights_here(spec: Spec, where: str) -> tuple[list[NodeCopy], JobEnv]:
    """This worker's copies of the plan's nodes and how its jobs run (see the docstring)."""
    try:
        worker = distributed.get_worker()
    except ValueError:
        raise RuntimeError(
            f"{where} ran outside a Dask worker: compute it on the executor's cluster, "
            "inside `with DaskExecutor(...) as ex:` or with ex.client.compute(...)"
        ) from None
    env = spec.envs.get(worker.address) or _same_host(spec, worker.address)
    keys = spec.keys.get(worker.address)
    if keys is not None:
        try:
            return [worker.data[k] for k in keys], env
        except KeyError:
            pass  # a copy lost (a restarted worker under the same address): fetch one
    with _FETCHED_LOCK:  # one fetch per worker: the task threads wait for it
        nodes = _FETCHED.get(spec.token)
        if nodes is None:
            nodes = _fetch(spec, where)
            _FETCHED[spec.token] = nodes
            while len(_FETCHED) > _FETCHED_KEEP:
                _FETCHED.popitem(last=False)
    return nodes, env


def _same_host(spec: Spec, address: str) -> JobEnv:
    host = address.rsplit(":", 1)[0]
    same = [e for a, e in spec.envs.items() if a.rsplit(":", 1)[0] == host]
    return (same or list(spec.envs.values()))[0]


def _fetch(spec: Spec, where: str) -> list[NodeCopy]:
    """Copies of the nodes from the first worker that still holds a whole set."""
    client = distributed.get_client()
    every = [k for keys in spec.keys.values() for k in keys]
    # Only keys the scheduler says are held: a future of a key lost with its worker would wait
    # for it forever (nothing can recompute scattered data).
    held = client.sync(client.scheduler.who_has, keys=every)
    errors = []
    for address, keys in sorted(spec.keys.items()):
        if not all(held.get(k) for k in keys):
            errors.append(f"{address}: gone")
            continue
        # state="memory": what the scheduler says of a future it sends a worker (a future made
        # here is not reported on otherwise, and would wait for ever)
        futures = [distributed.Future(k, client, state="memory") for k in keys]
        try:
            return client.gather(futures, errors="raise")
        except Exception as exc:  # that worker died since: try the next
            errors.append(f"{address}: {type(exc).__name__}")
        finally:
            for f in futures:
                f.release()
    raise RuntimeError(
        f"{where}: no worker holds the weights any more ({'; '.join(errors) or 'none placed'});"
        " build the collection again with the executor (it places them again)"
    )


@dataclass(frozen=True)
class Partitions:
    """What a partition task carries: the spec, the columns per input, the output columns."""

    spec: Spec
    columns: tuple[str | list[str], ...]
    dtypes: tuple[np.dtype, ...]
    out: list[list[str]]
    out_dtypes: tuple[np.dtype, ...]


def run_partition(part: Any, how: Partitions, partition_info: dict | None = None) -> Any:
    """On a worker: run the plan over one partition's rows; return the outputs as columns."""
    import pandas as pd

    spec = how.spec
    number = (partition_info or {}).get("number", "?")
    where = f"partition {number} of graph '{spec.graph}'"
    env = {}
    for name, cols, dtype in zip(spec.inputs, how.columns, how.dtypes, strict=True):
        missing = [c for c in ([cols] if isinstance(cols, str) else cols) if c not in part.columns]
        if missing:
            raise ValueError(f"{where}: input '{name}': column(s) {missing} missing here")
        try:
            values = part[cols].to_numpy(dtype=dtype)
        except (TypeError, ValueError) as exc:  # a missing value in an integer column, ...
            raise ValueError(f"{where}: input '{name}' from {cols}: {exc}") from None
        env[name] = as_tensor(values)
    if len(part) == 0:
        data = {c: np.zeros(0, dtype=d) for cs, d in zip(how.out, how.out_dtypes, strict=True)
                for c in cs}  # fmt: skip
        return pd.DataFrame(data, index=part.index)
    data = {}
    for cs, arr in zip(how.out, _run_rows(spec, env, where), strict=True):
        arr = arr.reshape(len(part), -1)
        data.update({c: arr[:, i] for i, c in enumerate(cs)})
    return pd.DataFrame(data, index=part.index)
