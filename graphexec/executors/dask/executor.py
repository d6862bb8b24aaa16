"""`DaskExecutor`: the executor's face over the modules of `graphexec.executors.dask`.

It holds what outlives a call (the client and the cluster it may own, the `Placer`, the
`calls.Session`) and hands every call to the modules below; the package docstring says what
they decide. An executor given a ``client=`` never closes it; one that started an embedded
cluster always does (`close`, ``with``, or a finalizer should the executor be dropped).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dask
import distributed
from dask.utils import parse_timedelta

from ...graph import Graph
from ...plans import Plan
from ...profile import TaskEvent
from ..base import Executor
from .calls import CallOptions, Session, call_modes, on_the_loop, run_call
from .connect import check_tls, close_owned, connect, quiet_interrupts, start_cluster
from .data import map_blocks, map_partitions
from .jobs import reject_cuda
from .pipeline import map_calls, run_shards
from .placer import Placer

__all__ = ["DaskExecutor"]


class DaskExecutor(Executor):
    """Run plans on a Dask cluster: an embedded ``LocalCluster``, a scheduler address, or a Client.

    Parameters
    ----------
    address : str, optional
        Scheduler to join, e.g. ``"tcp://host:8786"``. Default: Dask's ``scheduler-address``
        configuration if set, else an embedded ``LocalCluster``.
    client : distributed.Client, optional
        Use this client; the executor never closes it.
    schedule : {"dataflow", "levels"}
        ``"dataflow"`` submits every job at once; ``"levels"`` waits for each depth level.
    placement : {"replicate", "shard"} or mapping of node name to worker address
        Where nodes' weights live: on every worker (default), on ``copies`` workers each
        (balanced by weight bytes), or pinned by hand (unpinned nodes are sharded).
    copies : int
        ``placement="shard"``: workers holding each node (2 keeps a spare copy).
    torch_threads : int, optional
        Torch intra-op threads per worker task thread. Default: the host's cores divided by
        the task threads of the workers on that host (Dask's nanny sets 1).
    n_workers, threads_per_worker, processes
        Embedded cluster only: worker processes (default one per core), task threads per
        worker (default 1), processes (default) or threads in this process.
    security : distributed.Security, optional
        TLS settings, passed to the client and the embedded cluster. A ``tls://`` address
        needs the client's certificate; an embedded cluster with ``require_encryption=True``
        the scheduler's and the workers' too.
    timeout : str or float
        How long to try to reach the scheduler (``"10s"``, or seconds).
    retries : int
        Re-runs of a call that lost a worker, or data only a dead worker held (a node that
        raises is never re-run); past them the call raises `WorkerLostError`.
    dashboard_address : str, optional
        Embedded cluster only: where its dashboard listens (a free port if taken; the
        dashboard itself needs bokeh: ``pip install graphexec[dashboard]``). An address with
        no host (``":8787"``) listens on 127.0.0.1 only; name a host (``"0.0.0.0:8787"``) to
        serve other machines. None: no dashboard and no page served at all.

    Raises
    ------
    SchedulerUnreachableError
        If the scheduler cannot be reached within ``timeout`` (the message names the address).
    TLSConfigError
        If TLS is asked for without the certificates it needs (before anything starts).

    Calls raise `NodeError` for a node that raised or crashed its worker, `WorkerLostError`
    past ``retries``, `WorkerImportError` when a worker cannot import a node's module,
    `UnsendableNodeError` (before anything is sent) for a node that does not pickle, and
    `PlacementError` for weights or inputs that do not fit a worker.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("pair")
    >>> x = g.input("x")
    >>> a, b = g.node("a", nn.Linear(4, 4), x), g.node("b", nn.Linear(4, 4), x)
    >>> g.output(g.node("s", gx.add(), a, b))
    >>> with gx.DaskExecutor(n_workers=1, processes=False, dashboard_address=None) as ex:
    ...     ex.run(gx.plan(g), torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """

    keeps_autograd = False  # workers compute on copies: outputs come back without history

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        schedule: str = "dataflow",
        placement: str | Mapping[str, str] = "replicate",
        copies: int = 1,
        torch_threads: int | None = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        security: Any = None,
        timeout: str | float = "10s",
        retries: int = 2,
        dashboard_address: str | None = ":8787",
    ):
        super().__init__(schedule)
        Placer.check(placement)
        self.timeout = parse_timedelta(timeout)
        self._cluster: distributed.LocalCluster | None = None
        self._owns_client = client is None
        self._dashboard = client is not None or dashboard_address is not None
        if client is not None:
            self.client, self.address = client, client.scheduler.address
        else:
            self.address = address or dask.config.get("scheduler-address", None)
            check_tls(self.address, security, embedded=self.address is None)
            if self.address is None:
                cores = len(os.sched_getaffinity(0))
                self._cluster = start_cluster(
                    n_workers or cores, threads_per_worker, processes, security, dashboard_address
                )
                self.address = self._cluster.scheduler_address
            self.client = connect(self.address, self._cluster, security, self.timeout)
            quiet_interrupts()
        self._placer = Placer(self.client, placement, copies, self.timeout)
        self._session = Session(self.client, self.address, self._placer, torch_threads, retries)
        self._finalizer = weakref.finalize(
            self, close_owned, self.client if self._owns_client else None, self._cluster
        )

    # -- properties -------------------------------------------------------------------------
    @property
    def torch_threads(self) -> int | None:
        """Torch intra-op threads per worker task thread (None: the host's share)."""
        return self._session.torch_threads

    @torch_threads.setter
    def torch_threads(self, n: int | None) -> None:
        self._session.torch_threads = n

    @property
    def retries(self) -> int:
        """Re-runs of a call that lost a worker (see ``retries=``)."""
        return self._session.retries

    @retries.setter
    def retries(self, n: int) -> None:
        self._session.retries = n

    @property
    def dashboard_link(self) -> str | None:
        """Where the scheduler serves its pages: the dashboard (with bokeh installed, ``pip
        install graphexec[dashboard]``; without it, Dask's page saying so), and its info pages,
        health and metrics. None when nothing is served (``dashboard_address=None``). An
        embedded cluster serves it on loopback only, unless ``dashboard_address`` names a host.
        """
        return self.client.dashboard_link if self._dashboard else None

    @property
    def sent_bytes(self) -> int:
        """Bytes this client has sent per call: its task stream, plus scattered graph inputs.

        Weights travel by ``scatter``, counted in `scattered_nbytes`, not here.
        """
        comm = self.client.scheduler_comm
        return (comm.byte_count if comm is not None else 0) + self._session.input_bytes

    @property
    def scattered_nbytes(self) -> int:
        """Weight bytes scattered so far: each version of each node counted once."""
        return self._placer.store.scattered_nbytes

    @property
    def scatters(self) -> int:
        """(node, worker) copies of nodes sent so far."""
        return self._placer.store.scatters

    # -- placement ---------------------------------------------------------------------------
    def placement(self, plan: Plan | Graph) -> dict[str, tuple[str, ...]]:
        """``{node: worker addresses holding its weights}`` for every node with parameters.

        Places a sharded plan now (nothing is sent until it runs). A replicated node lists
        every worker; a sharded one its ``copies`` workers.

        Raises
        ------
        PlacementError
            If the plan cannot be placed (see ``placement=``).
        """
        return self._placer.holders(self._as_plan(plan))

    # -- running ----------------------------------------------------------------------------
    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        reject_cuda("a graph input", env)
        opts = CallOptions(events is not None, self.schedule, False, call_modes())
        run_call(self._session, plan, [env], events, opts)

    def _run_shards(self, plan: Plan, shards: list[tuple[Any, ...]],
                    events: list[TaskEvent] | None) -> list[Any]:  # fmt: skip
        """Data parallelism: each shard's whole plan as one Dask job (as `map` runs a chunk),
        all submitted before the first is awaited, spread over the workers holding the plan;
        activations stay on the workers, only each shard's outputs come back (`pipeline`)."""
        return run_shards(self._session, plan, shards, events)

    def map(
        self,
        plan: Plan | Graph,
        inputs: Iterable[Any],
        *,
        window: int | None = None,
        chunk: int | None = None,
        progress: bool = True,
        split: bool = False,
    ) -> Iterator[Any]:
        """Run over many inputs with several in flight; yield outputs in input order.

        Parameters
        ----------
        plan : Plan or Graph
        inputs : iterable
            Each item is a tuple of graph inputs, or the single input. May be endless: items
            are pulled only as results are taken, so memory stays bounded.
        window : int, optional
            Inputs in flight at once (default: two chunks per worker thread of the cluster).
        chunk : int, optional
            Inputs per Dask task: a chunk's inputs run one after another in one task, so
            Dask's own cost per task is paid once per chunk. Default: enough inputs for about
            `CHUNK_WORK` seconds of the plan's estimated work, at most `MAX_CHUNK`, and no
            more than leaves two chunks per worker thread (of ``inputs``, when it has a
            length; of ``window``, when given). ``chunk=1`` sends each input alone (the first
            output comes back soonest).
        progress : bool
            Show a tqdm progress bar of inputs done (when tqdm is installed).
        split : bool
            Replicated plans only. False (default): each chunk is one Dask task running the
            whole plan, so inputs overlap across workers with no activation crossing between
            them. True: one Dask task per plan task, as `run` does. A sharded or pinned plan
            always runs one task per plan task, where the shards are (a pipeline).

        Yields
        ------
        Each input's outputs, as `run` returns them.

        Raises
        ------
        NodeError
            Naming the node, if one raised; every call still in flight is cancelled.
        ValueError
            If ``chunk`` or ``window`` is below 1.
        """
        p = self._as_plan(plan)  # a generator: nothing runs before the first output is asked for
        whole = not split and self._placer.kind == "replicate"
        yield from map_calls(self._session, p, inputs, window, chunk, progress, whole)

    def map_blocks(self, plan: Plan | Graph, *arrays: Any, name: str | None = None) -> Any:
        """Run the plan over Dask arrays, block by block on the workers holding the blocks; lazy.

        Each block of rows becomes one Dask task running the whole plan on the worker that
        holds (or reads) it; the data never passes through the client. Nothing runs on the
        cluster until the result is computed, persisted, written (``to_zarr``) or used.
        Weights are sent now, once per worker, by the executor's placement (replicated).

        Parameters
        ----------
        plan : Plan or Graph
        *arrays : dask.array.Array
            One per graph input, in order; axis 0 is the batch. Chunked along axis 0 only,
            every array alike (``rechunk({1: -1})`` otherwise).
        name : str, optional
            Task key prefix shown by the dashboard and progress bar (default: the graph's name).

        Returns
        -------
        dask.array.Array, or the graph's output structure (tuple, dict) of them
            One block per input block; shapes and dtypes come from running the plan once on
            the client over two rows of zeros.

        Raises
        ------
        ValueError
            Before anything runs: an array chunked along a non-batch axis (naming the axis),
            arrays chunked differently, rows the graph cannot take (naming the input and the
            node), outputs that are not one row per input row.
        TypeError
            A dtype torch cannot take, or an argument that is not a Dask array.
        NodeError
            At compute time, naming the block and the node, for a node that raised.

        Examples
        --------
        >>> import dask.array as da, torch.nn as nn, graphexec as gx
        >>> g = gx.Graph("pair")
        >>> x = g.input("x")
        >>> a, b = g.node("a", nn.Linear(4, 2), x), g.node("b", nn.Linear(4, 2), x)
        >>> g.output(g.node("s", gx.add(), a, b))
        >>> with gx.DaskExecutor(n_workers=1, processes=False, dashboard_address=None) as ex:
        ...     y = ex.map_blocks(g, da.ones((6, 4), chunks=(3, 4), dtype="float32"))
        ...     y.numblocks, y.compute().shape
        ((2, 1), (6, 2))
        """
        return map_blocks(self._session, self._as_plan(plan), arrays, name)

    def map_partitions(
        self,
        plan: Plan | Graph,
        frame: Any,
        *,
        columns: Mapping[str, str | list[str]] | None = None,
        names: Mapping[str, str | list[str]] | None = None,
    ) -> Any:
        """Run the plan over a Dask dataframe, partition by partition on the workers; lazy.

        Parameters
        ----------
        plan : Plan or Graph
        frame : dask.dataframe.DataFrame
        columns : mapping, optional
            Graph input -> a list of columns (each row becomes a vector: ``(rows, k)``) or one
            column name (``(rows,)``). Default for a graph with one input: every column.
        names : mapping, optional
            Graph output (node name, as ``str(ref)``) -> its column name(s). Default: an output
            of shape ``(rows,)`` is one column named after it; ``(rows, k)`` is ``k`` columns
            ``f"{output}_{i}"``.

        Returns
        -------
        dask.dataframe.DataFrame
            The outputs as columns, with the input's index and divisions; nothing has run.

        Raises
        ------
        ValueError
            Before anything runs: a missing column (naming it), ``columns``/``names`` that do
            not match the graph, rows the graph cannot take (naming the input and the node).
        TypeError
            A column that is not numeric or boolean (naming it).
        NodeError
            At compute time, naming the partition and the node, for a node that raised.
        """
        return map_partitions(self._session, self._as_plan(plan), frame, columns, names)

    def __enter__(self) -> DaskExecutor:
        """Also makes this executor's client the current one for the ``with`` block, so a
        plain ``.compute()`` of a collection runs on its cluster (as inside ``with Client()``)."""
        self._current = getattr(self, "_current", [])
        self._current.append(self.client.as_current())
        self._current[-1].__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if getattr(self, "_current", None):
                self._current.pop().__exit__(None, None, None)
        finally:
            self.close()

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the weights; close the client and embedded cluster if this executor made them."""
        if not self._finalizer.alive:
            return
        self._placer.clear()
        self._release_keepers()
        self._finalizer()

    def _release_keepers(self) -> None:
        """Release the keepers (`calls`) now: a client given to this executor forgets
        them before `close` returns (Dask releases a future on its loop, later)."""
        keepers = list(self._session.keepers.values())
        self._session.keepers.clear()
        for future in keepers:
            future.release()
        if keepers and self.client.status == "running":
            self.client.sync(on_the_loop)  # runs after the releases queued there

    def __repr__(self) -> str:
        where = "embedded LocalCluster" if self._cluster is not None else "joined"
        return (
            f"DaskExecutor({self.address!r}, {where}, schedule={self.schedule!r}, "
            f"placement={self._placer.kind!r})"
        )
