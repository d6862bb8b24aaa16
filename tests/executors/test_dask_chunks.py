"""DaskExecutor.map in chunks: several inputs per Dask task, on real clusters.

Dask's own cost per task (client, scheduler and worker CPU) is paid once per chunk, so the
tests count Dask tasks with the scheduler's task stream, and check that chunked results are
the sequential ones, in input order, for replicated and sharded plans::

    replicated, chunk=4, 8 inputs:   [x0..x3] -> one task (whole plan)   [x4..x7] -> one task
    sharded two-stage, chunk=3, 7:   [x0..x2] stage0 -> stage1   [x3..x5] ...   [x6] ...
"""

from __future__ import annotations

import itertools

import pytest
import torch
from test_dask import _fail_on_negative, assert_same, counted, fan_out, lin
from test_dask_placement import two_stage

import graphexec as gx
from graphexec.executors.dask import CHUNK_WORK, MAX_CHUNK, DaskExecutor
from graphexec.executors.dask.pipeline import auto_chunk
from graphexec.planner import arrange

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.dask


def _tasks_of(client, run) -> list[str]:
    """Keys of the Dask tasks that ``run()`` computed (the scheduler's task stream)."""
    with distributed.get_task_stream(client=client) as stream:
        run()
    return [t["key"] for t in stream.data]


def test_map_runs_a_chunk_of_inputs_in_one_dask_task(dask_client):
    p = gx.plan(fan_out())
    xs = [torch.randn(2, 16) for _ in range(8)]
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        outs: list = []
        keys = _tasks_of(dask_client, lambda: outs.extend(ex.map(p, xs, chunk=4, progress=False)))
        expected = [gx.SequentialExecutor().run(p, x) for x in xs]
    assert len(keys) == 2, keys  # 8 inputs, one task per chunk of 4
    for out, ref in zip(outs, expected, strict=True):
        assert_same(out, ref)


def test_sharded_map_pipelines_chunks_in_order(dask_client):
    p = gx.plan(two_stage(), inline_below=0.0, fuse_chains=False)
    xs = [torch.full((2, 256), float(i)) for i in range(7)]
    with DaskExecutor(client=dask_client, placement="shard") as ex, torch.no_grad():
        outs: list = []
        keys = _tasks_of(dask_client, lambda: outs.extend(ex.map(p, xs, chunk=3, progress=False)))
        expected = [gx.SequentialExecutor().run(p, x) for x in xs]
    assert sorted(k.split("-")[0] for k in keys) == ["stage0"] * 3 + ["stage1"] * 3
    for out, ref in zip(outs, expected, strict=True):
        assert_same(out, ref)


def test_chunks_of_an_endless_iterable_stay_bounded(dask_client):
    endless, pulled = counted(torch.full((2, 16), float(i)) for i in itertools.count())
    p = gx.plan(fan_out())
    window, chunk = 6, 3
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        it = ex.map(p, endless, window=window, chunk=chunk, progress=False)
        results = []
        for out in itertools.islice(it, 10):
            assert len(pulled) <= len(results) + window  # at most `window` inputs in flight
            results.append(out)
        it.close()
        for i, out in enumerate(results):
            assert_same(out, gx.SequentialExecutor().run(p, torch.full((2, 16), float(i))))


def test_node_error_in_a_chunk_names_the_node_and_cancels_the_rest(dask_client):
    g = gx.Graph("fails_sometimes")
    x = g.input("x")
    g.output(g.node("l", lin(), g.node("check", _fail_on_negative, x)))
    items = [torch.ones(1, 16)] * 5 + [-torch.ones(1, 16) * 1e6] + [torch.ones(1, 16)] * 6
    with DaskExecutor(client=dask_client, retries=0) as ex:
        with pytest.raises(gx.NodeError, match="node 'check'"):
            list(ex.map(g, items, chunk=4, progress=False))
        kept = {f.key for f in ex._session.keepers.values()}  # held on purpose (dask/calls.py)
        assert set(k for k in dask_client.futures if str(k).startswith("fails_sometimes")) <= kept
        with pytest.raises(ValueError, match="chunk and window must be >= 1"):
            list(ex.map(g, items, chunk=-1, progress=False))


def test_auto_chunk_fills_chunks_with_work_and_leaves_every_worker_a_chunk():
    cheap = gx.plan(fan_out())  # microseconds of work per input
    assert auto_chunk(cheap, threads=2, window=None, length=None) == MAX_CHUNK
    assert auto_chunk(cheap, threads=2, window=None, length=64) == MAX_CHUNK
    assert auto_chunk(cheap, threads=2, window=None, length=12) == 3  # two chunks per thread
    assert auto_chunk(cheap, threads=2, window=3, length=None) == 1  # a small window: alone
    g = fan_out()
    heavy = arrange(g, {n: CHUNK_WORK for n in g.nodes})  # a chunk's worth of work per input
    assert auto_chunk(heavy, threads=2, window=None, length=None) == 1


def test_embedded_workers_do_not_run_the_statistical_profiler():
    with DaskExecutor(n_workers=1, dashboard_address=None) as ex:
        running = ex.client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert list(running.values()) == [False]
