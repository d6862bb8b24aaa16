"""Under load and after failures: correct results, bounded memory, no threads left behind."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import torch
import torch.nn as nn

import graphexec as gx
from tests.conftest import graphexec_threads

W = 128


def towers(n: int = 4) -> gx.Graph:
    g = gx.Graph("towers")
    x = g.input("x")
    branches = [g.node(f"t{i}", nn.Sequential(nn.Linear(W, W), nn.ReLU()), x) for i in range(n)]
    g.output(g.node("sum", gx.add(), *branches))
    return g


def eager(g: gx.Graph, x: torch.Tensor) -> torch.Tensor:
    return sum(g.nodes[f"t{i}"].fn(x) for i in range(4))


@pytest.mark.parametrize("schedule", ["levels", "dataflow"])
def test_eight_threads_share_one_graph_module(schedule):
    g = towers()
    gm = gx.GraphModule(g, gx.ThreadExecutor(schedule=schedule)).eval()
    xs = [torch.randn(16, W) for _ in range(64)]
    with torch.no_grad():
        expected = [eager(g, x) for x in xs]
        with ThreadPoolExecutor(8) as callers:
            outs = list(callers.map(lambda x: gm(x), xs))
    for out, exp in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    gm.executor.close()
    assert graphexec_threads() == []


def test_thousand_runs_keep_memory_flat_and_threads_bounded():
    g = towers()
    ex = gx.ThreadExecutor()
    p = gx.plan(g)
    x = torch.randn(32, W)
    proc = psutil.Process()
    with torch.no_grad():
        for _ in range(100):  # warm up allocator and pool
            ex.run(p, x)
        gc.collect()
        rss0, threads0 = proc.memory_info().rss, threading.active_count()
        for _ in range(1000):
            ex.run(p, x)
        gc.collect()
        rss1, threads1 = proc.memory_info().rss, threading.active_count()
    assert rss1 <= rss0 * 1.05, f"RSS grew {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB"
    assert threads1 == threads0
    ex.close()
    assert graphexec_threads() == []


def boom(t):
    raise ValueError("bad shape in branch")


def error_graph() -> gx.Graph:
    g = gx.Graph("err")
    x = g.input("x")
    ok = [g.node(f"ok{i}", nn.Linear(W, W), x) for i in range(3)]
    bad = g.node("broken", boom, g.node("pre", nn.Linear(W, W), x))
    g.output(g.node("sum", gx.add(), *ok, bad))
    return g


def test_node_error_names_the_node_and_executor_stays_usable(local_executor):
    g = error_graph()
    p = gx.plan(g, inline_below=0)
    with pytest.raises(gx.NodeError, match="node 'broken'.*ValueError: bad shape") as info:
        local_executor.run(p, torch.randn(4, W))
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.node == "broken"
    good = towers()
    with torch.no_grad():
        x = torch.randn(4, W)
        torch.testing.assert_close(
            local_executor.run(gx.plan(good), x), eager(good, x), rtol=1e-5, atol=1e-5
        )


def test_no_threads_left_after_error_and_close():
    ex = gx.ThreadExecutor()
    p = gx.plan(error_graph(), inline_below=0)
    for _ in range(3):
        with pytest.raises(gx.NodeError):
            ex.run(p, torch.randn(4, W))
    assert len(graphexec_threads()) <= ex.workers
    ex.close()
    ex.close()  # idempotent
    assert graphexec_threads() == []


def test_close_then_reuse_starts_a_fresh_pool():
    ex = gx.ThreadExecutor()
    g = towers()
    x = torch.randn(4, W)
    with torch.no_grad():
        first = ex.run(gx.plan(g), x)
        ex.close()
        torch.testing.assert_close(ex.run(gx.plan(g), x), first)
    ex.close()
    assert graphexec_threads() == []
