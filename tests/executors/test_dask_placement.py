"""DaskExecutor placement on real clusters: replicas that stay, shards, pins, memory pre-flight.

Weight bytes per worker are the scheduler's own: ``has_what`` and ``nbytes`` of the
``weights-*`` keys. The active memory manager is run on demand (``client.amm.run_once()``), so
"idle for longer than its interval" needs no sleeping.
"""

from __future__ import annotations

import itertools
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import dask
import pytest
import torch
import torch.nn as nn
from test_dask import assert_same, counted, diamond, fan_out

import graphexec as gx
from graphexec.executors.dask import DaskExecutor, PlacementError

distributed = pytest.importorskip("distributed")
from _dask_cluster import process_cluster  # noqa: E402

pytestmark = pytest.mark.dask

SCHEDULES = ["levels", "dataflow"]


def towers(n: int, d: int = 256, name: str = "towers") -> gx.Graph:
    """x -> t0..t{n-1} (Linear d x d) -> add"""
    g = gx.Graph(name)
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *[g.node(f"t{i}", nn.Linear(d, d), x) for i in range(n)]))
    return g


def two_stage(d: int = 256) -> gx.Graph:
    """x -> stage0 -> stage1: a chain of two heavy nodes."""
    g = gx.Graph("two_stage")
    s0 = g.node("stage0", nn.Sequential(nn.Linear(d, d), nn.ReLU()), g.input("x"))
    g.output(g.node("stage1", nn.Sequential(nn.Linear(d, d), nn.ReLU()), s0))
    return g


def weight_bytes_per_worker(client) -> dict[str, int]:
    sizes = client.nbytes(summary=False)
    return {
        w: sum(sizes.get(k, 0) for k in keys if str(k).startswith("weights-"))
        for w, keys in client.has_what().items()
    }


def weight_keys(client) -> dict[str, set[str]]:
    return {
        w: {k for k in keys if str(k).startswith("weights-")}
        for w, keys in client.has_what().items()
    }


def lanes(trace, prefix: str) -> set[str]:
    return {e.lane for e in trace.events if e.task.startswith(prefix)}


@contextmanager
def memory_cluster(n_workers: int, memory_limit: str):
    """In-process workers with a nominal memory_limit (no pausing, spilling or killing)."""
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause")}
    with dask.config.set(off):
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=False,
            memory_limit=memory_limit,
            dashboard_address=None,
            scheduler_port=0,
            scheduler_kwargs={"dashboard_address": ":0", "dashboard": False},
        )
        client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# -- replicated weights stay replicated ---------------------------------------------------------
def test_replicas_survive_the_active_memory_manager(dask_client):
    """Four towers on two workers, calls separated by AMM cycles: every call uses both workers.

    Before the fix the weights were one broadcast key each; the AMM dropped all replicas but
    one, and every tower followed the one copy left.
    """
    g = towers(4)
    p = gx.plan(g, inline_below=0.0)
    x = torch.randn(8, 256)
    workers = set(dask_client.nthreads())
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        expected = gx.SequentialExecutor().run(p, x)
        for _ in range(3):
            out, trace = ex.run(p, x, profile=True)
            assert_same(out, expected)
            assert lanes(trace, "t") == workers  # the towers ran on both workers
            for _ in range(3):  # idle: the memory manager runs, nothing waits on the weights
                dask_client.amm.run_once()
            keys = weight_keys(dask_client)
            for w in workers:  # every worker still holds a copy of every tower
                assert {k.split("-")[1] for k in keys[w]} >= {"t0", "t1", "t2", "t3"}


# -- results are the sequential ones, whatever the placement ------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("placement", ["replicate", "shard"])
@pytest.mark.parametrize("make", [diamond, fan_out])
def test_results_equal_sequential_for_both_placements(dask_client, make, placement, schedule):
    g = make()
    x = torch.randn(5, 16)
    p = gx.plan(g, inline_below=0.0, fuse_chains=False)
    ex = DaskExecutor(client=dask_client, placement=placement, schedule=schedule)
    with ex, torch.no_grad():
        assert_same(ex.run(p, x), gx.SequentialExecutor().run(p, x))


def test_shard_puts_each_job_where_its_weights_are(dask_client):
    """Four same-level towers on two workers: two each, every tower ran where it lives."""
    g = towers(4)
    p = gx.plan(g, inline_below=0.0)
    with DaskExecutor(client=dask_client, placement="shard") as ex, torch.no_grad():
        placed = ex.placement(p)
        assert sorted(placed) == ["t0", "t1", "t2", "t3"]
        assert all(len(ws) == 1 for ws in placed.values())
        by_worker = [sum(1 for ws in placed.values() if ws == (w,)) for w in dask_client.nthreads()]
        assert sorted(by_worker) == [2, 2]
        _, trace = ex.run(p, torch.randn(4, 256), profile=True)
        for e in trace.events:
            if e.task in placed:
                assert (e.lane,) == placed[e.task]
        keys = weight_keys(dask_client)
        for node, (w,) in placed.items():
            assert any(k.startswith(f"weights-{node}-") for k in keys[w])
            others = {k for o, ks in keys.items() if o != w for k in ks}
            assert not any(k.startswith(f"weights-{node}-") for k in others)


def test_shard_with_spare_copies(dask_client):
    g = towers(2)
    p = gx.plan(g, inline_below=0.0)
    with DaskExecutor(client=dask_client, placement="shard", copies=2) as ex, torch.no_grad():
        assert all(len(ws) == 2 for ws in ex.placement(p).values())
        x = torch.randn(2, 256)
        assert_same(ex.run(p, x), gx.SequentialExecutor().run(p, x))
        keys = weight_keys(dask_client)
        for node in ("t0", "t1"):  # a copy on each worker
            assert all(any(k.startswith(f"weights-{node}-") for k in ks) for ks in keys.values())


def test_pinned_placement_and_unknown_worker(dask_client):
    g = towers(2)
    p = gx.plan(g, inline_below=0.0)
    w0, w1 = sorted(dask_client.nthreads())
    x = torch.randn(3, 256)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(p, x)
        with DaskExecutor(client=dask_client, placement={"t0": w1, "t1": w1}) as ex:
            assert ex.placement(p) == {"t0": (w1,), "t1": (w1,)}
            out, trace = ex.run(p, x, profile=True)
            assert_same(out, expected)
            assert lanes(trace, "t") == {w1}
        with DaskExecutor(client=dask_client, placement={"t0": "tcp://10.9.9.9:1"}) as ex:
            with pytest.raises(PlacementError, match=r"'t0'.*tcp://10\.9\.9\.9:1.*not in"):
                ex.run(p, x)
            assert ex.scatters == 0
        ex = DaskExecutor(client=dask_client, placement={"nope": w0})
        with ex, pytest.raises(PlacementError, match="nope"):
            ex.run(p, x)


# -- memory ---------------------------------------------------------------------------------
def test_memory_preflight_names_the_biggest_nodes_and_shard_runs():
    """3 x 16 MiB of weights, workers of 48 MiB: replicated does not fit one, sharded fits two."""
    g = gx.Graph("big")
    x = g.input("x")
    outs = [g.node(f"big{i}", nn.Linear(1024, 4096), x) for i in range(3)]
    g.output(g.node("sum", gx.add(), *outs))
    p = gx.plan(g, inline_below=0.0)
    xs = torch.randn(2, 1024)
    with memory_cluster(2, "48MiB") as client, torch.no_grad():
        with DaskExecutor(client=client) as ex:
            with pytest.raises(PlacementError, match=r"'big0' \(16\.0 MiB\).*placement=\"shard\""):
                ex.run(p, xs)
            assert ex.scatters == 0 and not any(weight_keys(client).values())
        with DaskExecutor(client=client, placement="shard") as ex:
            assert_same(ex.run(p, xs), gx.SequentialExecutor().run(p, xs))
            per_worker = weight_bytes_per_worker(client)
            assert max(per_worker.values()) <= 0.8 * 48 * 2**20


def test_shard_spreads_weight_bytes_over_many_workers():
    """8 same-level towers on 4 workers: each worker holds <= 1/4 + 0.1 of the weights."""
    g = towers(8, d=512)
    p = gx.plan(g, inline_below=0.0)
    with memory_cluster(4, "1GiB") as client, torch.no_grad():
        ex = DaskExecutor(client=client, placement="shard")
        with ex:
            ex.run(p, torch.randn(2, 512))
            per_worker = weight_bytes_per_worker(client)
            total = ex.scattered_nbytes
        assert len(per_worker) == 4
        assert max(per_worker.values()) <= (1 / 4 + 0.1) * total


# -- map over a sharded plan -----------------------------------------------------------------------
def test_map_sharded_keeps_order_and_bounded_memory_on_an_endless_iterable(dask_client):
    g = two_stage()
    p = gx.plan(g, inline_below=0.0, fuse_chains=False)
    endless, pulled = counted(torch.full((2, 256), float(i)) for i in itertools.count())
    window = 3
    with DaskExecutor(client=dask_client, placement="shard") as ex, torch.no_grad():
        stages = ex.placement(p)
        assert stages["stage0"] != stages["stage1"]  # the two stages on different workers
        results = []
        it = ex.map(p, endless, window=window, progress=False)
        for out in itertools.islice(it, 10):
            assert len(pulled) <= len(results) + window + 1
            results.append(out)
        it.close()
        for i, out in enumerate(results):
            assert_same(out, gx.SequentialExecutor().run(p, torch.full((2, 256), float(i))))
    assert not [k for k in dask_client.futures if str(k).startswith("stage")]


# -- worker loss with shards ---------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_between_calls_replaces_only_the_lost_shards():
    g = towers(4)
    p = gx.plan(g, inline_below=0.0)
    x = torch.randn(3, 256)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(p, x)
    with (
        process_cluster(n_workers=3) as cluster,
        DaskExecutor(cluster.address, placement="shard") as ex,
        torch.no_grad(),
    ):
        assert_same(ex.run(p, x), expected)
        before = weight_keys(ex.client)
        pids = ex.client.run(os.getpid)
        victim = next(w for w, keys in before.items() if keys)
        lost = {k.split("-")[1] for k in before[victim]}
        os.kill(pids[victim], signal.SIGKILL)
        scatters = ex.scatters
        assert_same(ex.run(p, x), expected)
        after = weight_keys(ex.client)
        assert victim not in after
        for w in after:  # copies on the survivors were not sent again
            assert before[w] <= after[w]
        assert ex.scatters - scatters == len(lost)  # only the lost nodes were placed again
        assert set(ex.placement(p)) == {"t0", "t1", "t2", "t3"}


def test_threads_sharing_a_sharded_executor_get_right_results(dask_client):
    g = towers(4)
    p = gx.plan(g, inline_below=0.0)
    xs = [torch.randn(2, 256) for _ in range(4)]
    with torch.no_grad():
        expected = [gx.SequentialExecutor().run(p, x) for x in xs]
    with DaskExecutor(client=dask_client, placement="shard") as ex, torch.no_grad():
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda i: ex.run(p, xs[i % 4]), range(16)))
        assert ex.scatters == len(ex.placement(p)) + 1  # each node sent once: 4 towers + sum
    for i, out in enumerate(outs):
        assert_same(out, expected[i % 4])
