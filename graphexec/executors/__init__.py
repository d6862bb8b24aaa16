"""Executors: one protocol (`Executor.run`), several backends.

Each module imports only modules listed below it::

    dask/        Dask distributed (a package; imported only when asked for: `DaskExecutor`)
    cuda/        CUDA streams and CUDA graphs (a package: `CudaStreamExecutor`)
    threads      the local loop, tasks on a thread pool (`ThreadExecutor`)
    sequential   the local loop, never concurrent: the reference (`SequentialExecutor`)
    local        the one loop of in-process backends (`LocalExecutor`, `RunState`)
    base         the protocol and its call tree (`Executor`), `run_task`, `BudgetLanes`
    shards       a split plan's batch: inputs cut into shards, outputs merged
    schedule     what every run of one plan shares (counts, programs), made once per plan
    lanes        pool threads at a thread budget of their own
    own_threads  the calling thread's intra-op threads, set for one call
"""

from __future__ import annotations

from typing import Any

from ..graph import Graph
from .base import Executor, run_task
from .cuda import CudaStreamExecutor, auto_choice
from .local import LocalExecutor
from .sequential import SequentialExecutor
from .threads import ThreadExecutor

__all__ = [
    "Executor",
    "LocalExecutor",
    "SequentialExecutor",
    "ThreadExecutor",
    "CudaStreamExecutor",
    "DaskExecutor",
    "make_executor",
    "run_task",
    "EXECUTORS",
]

EXECUTORS = ("sequential", "threads", "cuda", "dask")


def __getattr__(name: str) -> Any:
    if name == "DaskExecutor":  # distributed is imported only when asked for
        from .dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(name)


def make_executor(spec: str | Executor, *, graph: Graph | None = None, **kwargs: Any) -> Executor:
    """An executor from a name (``"sequential"``, ``"threads"``, ``"cuda"``, ``"dask"``,
    ``"auto"``) or as given.

    ``"auto"`` needs ``graph``: a `CudaStreamExecutor` on the device of the graph's parameters
    when they are on a GPU, a `ThreadExecutor` otherwise (see `cuda.auto_choice`). ``kwargs``
    go to the executor's constructor.

    Raises
    ------
    ValueError
        If the name is unknown, or ``"auto"`` is given without ``graph``.
    CudaUnavailableError
        For ``"cuda"`` where torch sees no CUDA device.
    """
    if isinstance(spec, Executor):
        return spec
    if spec == "auto":
        if graph is None:
            raise ValueError("executor 'auto' picks by where a graph's parameters are: pass graph=")
        spec, device = auto_choice(graph)
        kwargs = {**device, **kwargs}
    if spec == "sequential":
        return SequentialExecutor(**kwargs)
    if spec == "threads":
        return ThreadExecutor(**kwargs)
    if spec == "cuda":
        return CudaStreamExecutor(**kwargs)
    if spec == "dask":
        from .dask import DaskExecutor

        return DaskExecutor(**kwargs)
    raise ValueError(f"unknown executor {spec!r}; choose one of {', '.join(EXECUTORS)}, auto")
