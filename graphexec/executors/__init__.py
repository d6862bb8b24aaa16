"""Executors: one protocol (`Executor.run`), several backends. See `base` for the loop."""

from __future__ import annotations

from typing import Any

from .base import Executor, LocalExecutor, run_task
from .sequential import SequentialExecutor
from .threads import ThreadExecutor

__all__ = [
    "Executor",
    "LocalExecutor",
    "SequentialExecutor",
    "ThreadExecutor",
    "DaskExecutor",
    "make_executor",
    "run_task",
    "EXECUTORS",
]

EXECUTORS = ("sequential", "threads", "dask")


def __getattr__(name: str) -> Any:
    if name == "DaskExecutor":  # distributed is imported only when asked for
        from .dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(name)


def make_executor(spec: str | Executor, **kwargs: Any) -> Executor:
    """An executor from a name (``"sequential"``, ``"threads"``, ``"dask"``) or as given."""
    if isinstance(spec, Executor):
        return spec
    if spec == "sequential":
        return SequentialExecutor(**kwargs)
    if spec == "threads":
        return ThreadExecutor(**kwargs)
    if spec == "dask":
        from .dask import DaskExecutor

        return DaskExecutor(**kwargs)
    raise ValueError(f"unknown executor {spec!r}; choose one of {', '.join(EXECUTORS)}")
