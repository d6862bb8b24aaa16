"""DaskExecutor faults found by using it: each test failed before its fix.

Real components only: an HTTP server and a silent socket on loopback for the bad ports, a real
``dask scheduler`` process killed with SIGKILL, the client's own byte counters.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
import torch.nn as nn
from test_dask import D, _slow_identity, assert_same, chain, lin

import graphexec as gx
from graphexec.executors.dask import (
    SCATTER_ABOVE,
    DaskExecutor,
    PlacementError,
    SchedulerUnreachableError,
    TLSConfigError,
    WorkerImportError,
)

distributed = pytest.importorskip("distributed")
from _dask_cluster import free_port, process_cluster  # noqa: E402

pytestmark = pytest.mark.dask


def one_node(fn, name: str = "f", **kwargs) -> gx.Plan:
    g = gx.Graph(name)
    g.output(g.node(name, fn, g.input("x"), kwargs=kwargs or None))
    return gx.plan(g, inline_below=0.0)


# -- bytes --------------------------------------------------------------------------------------
def test_a_small_view_of_a_big_tensor_is_sent_compacted(dask_client):
    """A 32 KiB view of a 64 MiB tensor as input: a call sends well under 1 MiB."""
    big = torch.randn(16 << 20)
    view = big[: 8 << 10]
    p = gx.plan(chain())
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        ex.run(p, torch.randn(2, D))  # weights out of the way
        sent = ex.sent_bytes
        out = ex.run(p, view.view(-1, D))
        assert ex.sent_bytes - sent < 1 << 20
        assert_same(out, gx.SequentialExecutor().run(p, view.view(-1, D)))


def test_sent_bytes_counts_scattered_inputs(dask_client):
    x = torch.randn(SCATTER_ABOVE // 4 // D + 1024, D)  # just over SCATTER_ABOVE
    p = gx.plan(chain())
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        ex.run(p, torch.randn(2, D))
        sent = ex.sent_bytes
        ex.run(p, x)
        assert ex.sent_bytes - sent >= x.nbytes


# -- a node that raises runs once -------------------------------------------------------------
def _count_and_fail(t, log: str):
    with open(log, "a") as f:  # a side effect, as a real node might have
        f.write("ran\n")
    raise RuntimeError("fails every time")


def test_retries_do_not_rerun_a_node_that_raises(dask_client, tmp_path):
    log = tmp_path / "runs"
    ex = DaskExecutor(client=dask_client, retries=2)
    with ex, pytest.raises(gx.NodeError, match="fails every time"):
        ex.run(one_node(_count_and_fail, log=str(log)), torch.ones(2))
    assert log.read_text().count("ran") == 1


# -- ports that are not a Dask scheduler --------------------------------------------------------
def test_a_port_serving_http_fails_within_the_timeout_naming_the_address():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(SchedulerUnreachableError, match=address.replace(".", r"\.")):
            DaskExecutor(address, timeout="1s")
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_that_never_answers_fails_within_the_timeout():
    with socket.socket() as silent:  # accepts (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(SchedulerUnreachableError, match="never answers"):
            DaskExecutor(address, timeout="1s")
        assert time.monotonic() - start < 30  # Dask's own client waited past 60 s here


# -- the embedded cluster and fixed ports --------------------------------------------------------
@pytest.fixture
def port_8787_taken():
    """Port 8787 in use, by this test if nothing else holds it."""
    holder = socket.socket()
    try:
        holder.bind(("", 8787))
        holder.listen(1)
    except OSError:
        pass  # someone else's dashboard: just as taken
    yield
    holder.close()


def test_embedded_cluster_starts_when_8787_is_taken(port_8787_taken):
    with DaskExecutor(n_workers=1, processes=False) as ex:
        assert not ex.dashboard_link.endswith(":8787/status")
        assert ex.run(gx.plan(chain()), torch.randn(2, D)).shape == (2, D)
    with DaskExecutor(n_workers=1, processes=False, dashboard_address=None) as ex:
        assert ex.dashboard_link is None
        assert ex._cluster.scheduler.http_server.port != 8787
        assert ex.run(gx.plan(chain()), torch.randn(2, D)).shape == (2, D)


def listening() -> set[tuple[str, int]]:
    """(address, port) of every socket listening in this process and its children."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    found = set()
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            conns = p.net_connections("inet")
            found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_embedded_cluster_exposes_nothing():
    """Scheduler, nanny, worker and the scheduler's HTTP server listen on 127.0.0.1, dashboard
    or not; the dashboard link is where pages are served; scratch files in a private folder."""
    before = listening()
    with DaskExecutor(n_workers=1, dashboard_address=":0") as ex:  # as cli and demo ask
        (local,) = ex.client.run(lambda dask_worker: dask_worker.local_directory).values()
        scratch = Path(ex._cluster.scratch)
        assert Path(local).is_relative_to(scratch) and scratch.parent == Path(tempfile.gettempdir())
        assert scratch.stat().st_mode & 0o777 == 0o700
        opened = listening() - before
        assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        port = ex._cluster.scheduler.http_server.port
        assert ("127.0.0.1", port) in opened
        assert ex.dashboard_link == f"http://127.0.0.1:{port}/status"
        assert _get(ex.dashboard_link) == 200  # the dashboard, or Dask's "install bokeh" page
    assert not scratch.exists()  # removed on close
    with DaskExecutor(n_workers=1, processes=False, dashboard_address=None) as ex:
        opened = listening() - before
        assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        assert ex.dashboard_link is None
        http = f"http://127.0.0.1:{ex._cluster.scheduler.http_server.port}"
        assert [_get(http + page) for page in ("/status", "/info/main/workers.html")] == [404] * 2
    with DaskExecutor(n_workers=1, processes=False, dashboard_address="0.0.0.0:0") as ex:
        assert ex._cluster.scheduler.http_server.address == "0.0.0.0"  # asked for: served


# -- torch threads on the workers ---------------------------------------------------------------
def _threads(t):
    return t * 0 + torch.get_num_threads()


def test_workers_use_their_cores_for_torch(dask_client):
    p = one_node(_threads)
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // sum(dask_client.nthreads().values()))
    with DaskExecutor(client=dask_client) as ex:
        assert ex.run(p, torch.zeros(1)).item() == share
    with DaskExecutor(client=dask_client, torch_threads=3) as ex:
        assert ex.run(p, torch.zeros(1)).item() == 3
    with DaskExecutor(client=dask_client) as ex:  # back to the default share
        assert ex.run(p, torch.zeros(1)).item() == share


# -- losing a worker or the scheduler --------------------------------------------------------------
def _run_until_marker(ex, plan, x, marker: str):
    """Start ``ex.run`` on a thread; return its future once the slow node has started."""
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(ex.run, plan, x)
    pool.shutdown(wait=False)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        assert time.monotonic() < deadline, "the slow node never started"
        if fut.done():
            fut.result()  # it failed: show why
        time.sleep(0.05)
    return fut


@pytest.mark.slow
def test_lost_scattered_input_is_sent_again(tmp_path):
    """x (> SCATTER_ABOVE) lives only on the worker running `slow`; SIGKILL it mid-call."""
    marker = str(tmp_path / "pid")
    g = gx.Graph("big_input")
    slow = g.node("slow", _slow_identity, g.input("x"), kwargs={"marker": marker})
    g.output(g.node("head", lin(), slow))
    p = gx.plan(g, inline_below=0.0)
    x = torch.randn(SCATTER_ABOVE // 4 // D + 1024, D)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(p, x)
    os.remove(marker)
    with process_cluster(n_workers=2) as cluster, DaskExecutor(cluster.address) as ex:
        fut = _run_until_marker(ex, p, x, marker)
        os.kill(int(Path(marker).read_text()), signal.SIGKILL)
        assert_same(fut.result(timeout=120), expected)


@pytest.mark.slow
def test_scheduler_dying_mid_call_says_the_cluster_is_gone(tmp_path):
    marker = str(tmp_path / "pid")
    p = one_node(_slow_identity, "slow", marker=marker)
    with process_cluster(n_workers=1) as cluster:
        ex = DaskExecutor(cluster.address, timeout="2s")
        try:
            fut = _run_until_marker(ex, p, torch.ones(2), marker)
            cluster.scheduler.send_signal(signal.SIGKILL)
            pattern = f"lost the Dask scheduler at {cluster.address}".replace(".", r"\.")
            with pytest.raises(SchedulerUnreachableError, match=pattern + ".*new DaskExecutor"):
                fut.result(timeout=60)
            with pytest.raises(SchedulerUnreachableError, match=pattern):
                ex.run(p, torch.ones(2))  # at once, not after another connect timeout
        finally:
            ex.close()


def test_node_modules_are_sized_by_their_weights(dask_client):
    """Dask's memory accounting sees a node copy as its weights, not as a small object."""
    g = gx.Graph("sized")
    g.output(g.node("big", nn.Linear(1024, 1024), g.input("x")))
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        ex.run(gx.plan(g), torch.randn(2, 1024))
        sizes = dask_client.nbytes(summary=False)
        copies = [n for k, n in sizes.items() if str(k).startswith("weights-big-")]
        assert copies and all(n >= 4 << 20 for n in copies)


# -- TLS ----------------------------------------------------------------------------------------
def test_tls_without_certificates_names_the_address_and_leaves_nothing_behind():
    """Three tries in a row: the same clear error each time, at once, no Client left running."""
    address = f"tls://127.0.0.1:{free_port()}"
    threads = {t.name for t in threading.enumerate()}
    for _ in range(3):  # the third try deadlocked
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(DaskExecutor, address, timeout="2s")
            with pytest.raises(TLSConfigError, match=address.replace(".", r"\.") + ".*client"):
                fut.result(timeout=30)
    assert {t.name for t in threading.enumerate()} <= threads  # no half-built Client's loop
    with pytest.raises(TLSConfigError, match="embedded cluster.*scheduler, worker"):
        DaskExecutor(n_workers=1, security=distributed.Security(require_encryption=True))


@pytest.fixture
def self_signed(tmp_path) -> tuple[str, str]:
    """A self-signed certificate and its key, made by the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=graphexec-test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_embedded_cluster_over_tls_as_the_docs_say(self_signed):
    cert, key = self_signed
    security = distributed.Security(
        tls_ca_file=cert,
        **{
            f"tls_{role}_{part}": f
            for role in ("client", "scheduler", "worker")
            for part, f in (("cert", cert), ("key", key))
        },  # fmt: skip
        require_encryption=True,
    )
    with DaskExecutor(n_workers=1, processes=False, security=security) as ex, torch.no_grad():
        assert ex.address.startswith("tls://127.0.0.1:")
        p = gx.plan(chain())
        x = torch.randn(2, D)
        assert_same(ex.run(p, x), gx.SequentialExecutor().run(p, x))


# -- errors that cross back: unpicklable, None, one message --------------------------------------
class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception does not pickle")


def _raise_unpicklable(t):
    raise _Unpicklable("the node's own message")


def _raise_with_a_lock(t):
    err = RuntimeError("the node's own message")
    err.lock = threading.Lock()  # an attribute that does not pickle
    raise err


@pytest.mark.parametrize("fn", [_raise_unpicklable, _raise_with_a_lock])
def test_an_exception_that_does_not_pickle_is_still_a_node_error(dask_client, fn):
    with DaskExecutor(client=dask_client) as ex:
        with pytest.raises(gx.NodeError, match="node 'bad' failed: .*the node's own message"):
            ex.run(one_node(fn, "bad"), torch.ones(2))
        assert ex.run(one_node(torch.relu, "ok"), torch.ones(2)).shape == (2,)


def _forgets_return(t):
    t + 1


def test_none_is_named_as_the_local_executors_name_it(dask_client):
    """x -> forgot -> head, each its own Dask task (the None crosses workers); a None input."""
    g = gx.Graph("forgetful")
    g.output(g.node("head", torch.relu, g.node("forgot", _forgets_return, g.input("x"))))
    p = gx.plan(g, inline_below=0.0, fuse_chains=False)
    none_input = one_node(torch.relu, "relu")
    cases = [(p, torch.ones(2), "node 'forgot' failed"), (none_input, None, "node 'relu' failed")]
    with DaskExecutor(client=dask_client) as ex, gx.ThreadExecutor() as local:
        for plan, x, says in cases:
            with pytest.raises(gx.NodeError, match=says) as here:
                local.run(plan, x)
            with pytest.raises(gx.NodeError) as there:
                ex.run(plan, x)
            assert str(there.value).startswith(str(here.value))  # then the remote traceback


def test_a_node_error_is_reported_once(caplog):
    """Dask's worker logs its own "Compute Failed" block: graphexec's NodeError says it all."""
    ex = DaskExecutor(n_workers=1, processes=False, dashboard_address=None)
    with ex, caplog.at_level("ERROR"), pytest.raises(gx.NodeError, match="node 'bad'"):
        ex.run(one_node(_raise_with_a_lock, "bad"), torch.ones(2))
    assert not [r for r in caplog.records if "Compute Failed" in r.getMessage()]


_CLIENT_ONLY = """
import torch.nn as nn


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * 2
"""


@pytest.mark.slow
def test_a_module_the_workers_lack_is_named_with_the_ways_out(tmp_path, monkeypatch):
    """A node's class lives in a module only the client can import; upload_file fixes it."""
    source = tmp_path / "gx_client_only.py"
    source.write_text(_CLIENT_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gx_client_only", raising=False)
    scaled = importlib.import_module("gx_client_only").Scaled()
    g = gx.Graph("client_only")
    g.output(g.node("scaled", scaled, g.input("x")))
    p, x = gx.plan(g), torch.randn(2, 4)
    with process_cluster(n_workers=1) as cluster, DaskExecutor(cluster.address) as ex:
        with torch.no_grad(), pytest.raises(WorkerImportError) as info:
            ex.run(p, x)
        message = str(info.value)
        assert "cannot import module 'gx_client_only', which node 'scaled' needs" in message
        assert "upload_file" in message and "__main__" in message
        ex.client.upload_file(str(source))
        with torch.no_grad():
            assert_same(ex.run(p, x), scaled(x))
    monkeypatch.delitem(sys.modules, "gx_client_only")


@pytest.mark.timeout(60)  # were x sent, a worker over its memory limit could pause: a hang
def test_an_input_bigger_than_a_worker_fails_before_it_is_sent():
    # An in-process worker measures this whole process (hundreds of MiB) against its 64 MiB:
    # left on, its memory monitor paused it within 100 ms, and on a busy machine the call's
    # first scatter (before any input is placed) found no worker and hung.
    import dask

    unmanaged = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause")}
    with dask.config.set(unmanaged):
        cluster = distributed.LocalCluster(
            n_workers=1, processes=False, memory_limit="64MiB", dashboard_address="127.0.0.1:0"
        )
    client = distributed.Client(cluster, set_as_default=False)
    x = torch.zeros(16 << 20)  # 64 MiB: more than 80% of the worker's memory_limit
    try:
        with DaskExecutor(client=client) as ex:
            sent = ex.sent_bytes
            with pytest.raises(PlacementError, match="graph input 'x' is 64.0 MiB.*memory_limit"):
                ex.run(one_node(torch.relu, "relu"), x)
            assert ex.sent_bytes - sent < 1 << 20  # nothing of x went out
    finally:
        client.close()
        cluster.close()


# -- the scheduler's bookkeeping ------------------------------------------------------------------
def test_calls_reuse_the_schedulers_task_groups_and_span(dask_client):
    """Dask keeps each span (groups, metrics, metadata) for the scheduler's life: calls that
    each made a new one grew the process hosting it by ~4 KiB per call."""
    spans = dask_client.cluster.scheduler.extensions["spans"]

    def bookkeeping() -> tuple[int, int]:
        return len(spans.spans), sum(len(s.groups) for s in spans.spans.values())

    g = gx.Graph("kept")
    x = g.input("x")
    g.output(g.node("add", gx.add(), g.node("a", nn.Linear(4, 4), x), g.node("b", torch.relu, x)))
    p = gx.plan(g, inline_below=0.0)
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        ex.run(p, torch.ones(2, 4))
        after_one = bookkeeping()
        for _ in range(10):
            ex.run(p, torch.ones(2, 4))
        assert bookkeeping() == after_one
