"""DaskExecutor under worker churn: workers SIGKILLed between and during calls, nodes that crash.

One embedded cluster (2 nanny-managed worker processes that come back when killed) serves the
module. Faults are real SIGKILLs and real ``os._exit`` calls, and each step waits for what the
scheduler reports (a worker removed, a replacement listed), never for a fixed time.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import torch
from test_dask import D, assert_same, diamond, lin

import graphexec as gx
from graphexec.executors.dask import DaskExecutor, placer
from graphexec.executors.dask.faults import KILLS_ALLOWED

pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.slow]


def listed(client) -> set[str]:
    """Worker addresses the scheduler lists right now."""
    return set(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def wait_until(done: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll the scheduler's state until ``done()``; fail naming ``what`` after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def kill_a_worker(ex: DaskExecutor) -> str:
    """SIGKILL one worker process of ``ex``'s cluster; return its address."""
    address, pid = sorted(ex.client.run(os.getpid).items())[0]
    os.kill(pid, signal.SIGKILL)
    return address


def removed(ex: DaskExecutor, address: str) -> None:
    wait_until(lambda: address not in listed(ex.client), "the scheduler removed the worker")


def back_to_two(ex: DaskExecutor) -> None:
    wait_until(lambda: len(listed(ex.client)) == 2, "the nanny restarted the worker")


@pytest.fixture(scope="module")
def churn_ex():
    """An embedded cluster of 2 worker processes, each restarted by its nanny when killed."""
    with DaskExecutor(n_workers=2, dashboard_address=None, timeout="30s") as ex:
        yield ex


@pytest.fixture
def stale_list(churn_ex, monkeypatch):
    """The client keeps the list of workers it takes now for an hour: every call after a
    death meets a list that still names the dead worker (with the default 1 s, some do)."""
    monkeypatch.setattr(placer, "WORKERS_TTL", 3600.0)
    churn_ex.placement(gx.plan(diamond()))  # asks the scheduler for its workers


def test_calls_right_after_a_worker_died(churn_ex, stale_list):
    """x -> (a, b) -> add, a and b on different workers; kill one between calls, twice."""
    ex = churn_ex
    p = gx.plan(diamond(), inline_below=0.0)
    x = torch.randn(3, D)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(p, x)
        assert_same(ex.run(p, x), expected)  # copies of a and b on both workers
        for _ in range(2):
            removed(ex, kill_a_worker(ex))
            assert_same(ex.run(p, x), expected)
            back_to_two(ex)
        kill_a_worker(ex)  # and at once, while the scheduler may still list it
        assert_same(ex.run(p, x), expected)
        back_to_two(ex)


def test_map_survives_a_worker_killed_mid_dataset(churn_ex, stale_list):
    ex = churn_ex
    p = gx.plan(diamond())
    xs = [torch.randn(2, D) for _ in range(16)]
    with torch.no_grad():
        expected = [gx.SequentialExecutor().run(p, x) for x in xs]
        it = ex.map(p, xs, chunk=1, window=4, progress=False)
        outs = [next(it)]
        removed(ex, kill_a_worker(ex))
        outs += list(it)
    assert len(outs) == len(xs)  # none of the dataset lost
    for out, ref in zip(outs, expected, strict=True):
        assert_same(out, ref)
    back_to_two(ex)


def _crash(t):
    os._exit(1)  # as a segfault or the OOM killer would end the worker


def _removals(client) -> int:
    return sum(m.get("action") == "remove-worker" for _, m in client.get_events("all"))


def test_a_node_that_kills_its_worker_is_named_and_not_rerun(churn_ex):
    ex = churn_ex
    g = gx.Graph("crashes")
    g.output(g.node("crash", _crash, g.node("l", lin(), g.input("x"))))
    p = gx.plan(g, inline_below=0.0, fuse_chains=False)
    before = _removals(ex.client)
    with pytest.raises(gx.NodeError, match="node 'crash' failed: the worker running it died"):
        ex.run(p, torch.ones(2, D))
    assert _removals(ex.client) - before == KILLS_ALLOWED  # not until no worker is left
    ok = gx.plan(diamond())
    x = torch.randn(2, D)
    with torch.no_grad():  # at once, while the nannies bring the workers back
        assert_same(ex.run(ok, x), gx.SequentialExecutor().run(ok, x))
    back_to_two(ex)
