"""Shared fixtures: every executor and schedule; a real Dask cluster for the conformance suite."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

import graphexec as gx

LOCAL = [("sequential", "levels"), ("sequential", "dataflow"), ("threads", "levels"),
         ("threads", "dataflow")]  # fmt: skip
DASK = [("dask", "levels"), ("dask", "dataflow")]


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster (2 worker processes, 1 thread each), shared by the session."""
    distributed = pytest.importorskip("distributed")
    try:
        import graphexec.executors.dask  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"DaskExecutor not available: {exc}")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)  # a test sees only what it asks for
    yield client
    client.close()
    cluster.close()


def make(kind: str, schedule: str, request: pytest.FixtureRequest) -> gx.Executor:
    if kind == "dask":
        client = request.getfixturevalue("dask_client")  # skips while Dask is unavailable
        return gx.DaskExecutor(client=client, schedule=schedule)
    return gx.make_executor(kind, schedule=schedule)


@pytest.fixture(
    params=LOCAL + [pytest.param(p, marks=pytest.mark.dask) for p in DASK],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def executor(request):
    """Each executor with each schedule (Dask on the shared cluster)."""
    ex = make(*request.param, request)
    yield ex
    ex.close()


@pytest.fixture(params=LOCAL, ids=lambda p: f"{p[0]}-{p[1]}")
def local_executor(request):
    """Each in-process executor with each schedule."""
    ex = make(*request.param, request)
    yield ex
    ex.close()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def graphexec_threads() -> list[threading.Thread]:
    """graphexec's threads still alive. Executors that earlier tests dropped unclosed (a docs
    page's scope is a reference cycle) are collected first: their pools' threads then end
    (ThreadPoolExecutor's own finalizer); an executor still referenced keeps its threads."""
    gc.collect()
    for t in threading.enumerate():
        if t.name.startswith("graphexec"):
            t.join(timeout=0.2)  # a finalized pool's worker ends within moments
    return [t for t in threading.enumerate() if t.name.startswith("graphexec")]
