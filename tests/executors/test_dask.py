"""DaskExecutor on real clusters: a LocalCluster of processes, and scheduler/worker processes.

Nothing is mocked: bytes are the client's real task-stream counter, worker loss is a real
SIGKILL, leftover processes are looked up with psutil.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import psutil
import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.executors.dask import DaskExecutor, SchedulerUnreachableError
from graphexec.executors.dask.jobs import fingerprint, make_jobs

distributed = pytest.importorskip("distributed")
from _dask_cluster import free_port, process_cluster  # noqa: E402

pytestmark = pytest.mark.dask

D = 16
SCHEDULES = ["levels", "dataflow"]


def lin(d_in: int = D, d_out: int = D) -> nn.Module:
    return nn.Linear(d_in, d_out)


def chain() -> gx.Graph:
    """x -> l0 -> relu -> l1"""
    g = gx.Graph("chain")
    h = g.node("l0", lin(), g.input("x"))
    g.output(g.node("l1", lin(), g.node("relu", torch.relu, h)))
    return g


def diamond() -> gx.Graph:
    """
        x
       / \\
      a   b
       \\ /
       add
    """
    g = gx.Graph("diamond")
    x = g.input("x")
    g.output(g.node("add", gx.add(), g.node("a", lin(), x), g.node("b", lin(), x)))
    return g


def fan_out() -> gx.Graph:
    """x -> b0..b3 -> stack(dim=1) -> mean(dim=1) -> head"""
    g = gx.Graph("fan_out")
    x = g.input("x")
    branches = [g.node(f"b{i}", lin(), x) for i in range(4)]
    pooled = g.node("pool", gx.mean(dim=1), g.node("stack", gx.stack(dim=1), *branches))
    g.output(g.node("head", lin(D, 3), pooled))
    return g


def multi_output() -> gx.Graph:
    """x -> split -> (first -> a, second -> b); outputs {"a": a, "b": b, "sum": a + b}"""
    g = gx.Graph("multi_output")
    x = g.input("x")
    s = g.node("split", lambda t: (t[:, : D // 2], t[:, D // 2 :]), x)
    a = g.node("a", lin(D // 2, D), s[0])
    b = g.node("b", lin(D // 2, D), s[1])
    g.output(a=a, b=b, sum=g.node("sum", gx.add(), a, b))
    return g


def counted(values: Iterable) -> tuple[Iterator, list[int]]:
    """A generator over ``values`` and the list of indices it has handed out so far."""
    pulled: list[int] = []
    lock = threading.Lock()  # map() pulls from the thread that iterates it; the test reads

    def gen() -> Iterator:
        for i, v in enumerate(values):
            with lock:
                pulled.append(i)
            yield v

    return gen(), pulled


def assert_same(a, b) -> None:
    if isinstance(b, dict):
        assert a.keys() == b.keys()
        for k in b:
            assert_same(a[k], b[k])
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if _is_cluster_process(p)}


def _is_cluster_process(p: psutil.Process) -> bool:
    try:  # multiprocessing's resource tracker lives as long as this process: not a leak
        return "resource_tracker" not in " ".join(p.cmdline()) and p.status() != "zombie"
    except psutil.NoSuchProcess:
        return False


# -- results ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("make", [chain, diamond, fan_out, multi_output])
def test_results_equal_sequential(dask_client, make, schedule):
    g = make()
    x = torch.randn(5, D)
    with torch.no_grad():
        for p in (gx.plan(g), gx.plan(g, inline_below=0.0, fuse_chains=False)):
            expected = gx.SequentialExecutor().run(p, x)
            with DaskExecutor(client=dask_client, schedule=schedule) as ex:
                assert_same(ex.run(p, x), expected)


def test_merge_ops_are_not_dask_tasks(dask_client):
    """x -> b0..b3 (512 x 512) -> stack -> mean -> head: stack and mean run inside head's task."""
    g = gx.Graph("wide")
    x = g.input("x")
    branches = [g.node(f"b{i}", nn.Linear(512, 512), x) for i in range(4)]
    pooled = g.node("pool", gx.mean(dim=1), g.node("stack", gx.stack(dim=1), *branches))
    g.output(g.node("head", nn.Linear(512, 512), pooled))
    p = gx.plan(g)
    assert len(p.tasks) == 5
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        out, trace = ex.run(p, torch.randn(2, 512), profile=True)
        assert_same(out, gx.SequentialExecutor().run(p, torch.randn(2, 512)) * 0 + out)
    assert sorted(e.task for e in trace.events) == sorted(p.tasks)  # one Dask task per task
    assert {n for e in trace.events for n in e.nodes} == set(p.task_of)
    assert {e.lane for e in trace.events} <= set(dask_client.nthreads())


def test_inline_task_runs_inside_each_consumer():
    """x -> cheap relu -> (a, b): relu is inline with two consumers, so it runs in both jobs."""
    g = gx.Graph("shared_cheap")
    r = g.node("relu", torch.relu, g.input("x"))
    a = g.node("a", nn.Linear(512, 512), r)
    b = g.node("b", nn.Linear(512, 512), r)
    g.output(a, b)
    p = gx.plan(g)
    assert p.tasks["relu"].inline
    jobs = make_jobs(p)
    assert sorted(jobs) == ["a", "b"]
    assert all(j.nodes[0] == "relu" and j.inputs == ("x",) for j in jobs.values())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_profile_events_come_from_workers(dask_client, schedule):
    g = diamond()
    p = gx.plan(g, inline_below=0.0, fuse_chains=False)
    with DaskExecutor(client=dask_client, schedule=schedule) as ex:
        out, trace = ex.run(p, torch.randn(3, D), profile=True)
    assert out.shape == (3, D)
    by_task = {e.task: e for e in trace.events}
    assert set(by_task) == set(p.tasks)
    assert {e.lane for e in trace.events} <= set(dask_client.nthreads())
    for name, task in p.tasks.items():  # no task started before its dependencies ended
        for d in task.deps:
            assert by_task[name].start >= by_task[d].end


# -- clusters: embedded, joined, given -------------------------------------------------------
@pytest.mark.slow
def test_embedded_cluster_via_graph_module_is_closed():
    before = descendants()
    g = diamond()
    x = torch.randn(3, D)
    gm = gx.GraphModule(g, executor="dask")
    try:
        ex = gm.executor
        assert isinstance(ex, DaskExecutor) and ex._cluster is not None
        assert len(ex.client.nthreads()) == len(os.sched_getaffinity(0))
        assert descendants() - before  # the workers are child processes of this one
        with torch.no_grad():
            assert_same(gm(x), gx.SequentialExecutor().run(gx.plan(g), x))
    finally:
        gm.close()
    gm.close()  # idempotent
    assert descendants() - before == set()


@pytest.mark.slow
def test_graph_module_on_dask_refuses_to_train_silently(dask_client):
    """Dask sends plain tensors back: a forward with grad on and trainable parameters would
    return outputs that train nothing. It is refused, naming a parameter and the way out;
    under no_grad, or with frozen parameters, it runs."""
    g = diamond()
    x = torch.randn(3, D)
    expected = gx.SequentialExecutor().run(gx.plan(g), x)
    with DaskExecutor(client=dask_client) as ex:
        gm = gx.GraphModule(g, executor=ex, measure=False)
        with pytest.raises(RuntimeError, match=r"without autograd history.*'nodes\.\w+\."
                           r"weight'.*executor='threads'"):  # fmt: skip
            gm(x)
        with torch.no_grad():
            assert_same(gm(x), expected)
        gm.requires_grad_(False)
        assert_same(gm(x), expected)


@pytest.mark.slow
def test_embedded_cluster_closed_when_the_block_raises():
    before = descendants()
    ex = DaskExecutor(n_workers=1, dashboard_address=None)
    with pytest.raises(KeyError, match="user error"), ex:
        ex.run(gx.plan(chain()), torch.randn(2, D))
        raise KeyError("user error")
    assert ex.client.status == "closed"
    assert descendants() - before == set()


@pytest.mark.slow
def test_ctrl_c_leaves_no_worker_processes(tmp_path):
    """SIGINT while a slow graph runs: the script exits, all its workers are gone, and it
    printed the one traceback that matters (it printed 30-34 lines of Dask's shutdown)."""
    marker = tmp_path / "running"
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            import torch, graphexec as gx

            def slow(t):
                pathlib.Path({str(marker)!r}).write_text("x")
                time.sleep(60)
                return t

            if __name__ == "__main__":
                g = gx.Graph("slow")
                x = g.input("x")
                g.output(g.node("s", gx.add(), g.node("a", slow, x), g.node("b", slow, x)))
                with gx.DaskExecutor(n_workers=2, dashboard_address=None) as ex:
                    ex.run(gx.plan(g), torch.ones(2))
            """
        )
    )
    err = tmp_path / "stderr"
    with err.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stderr=sink)
        try:
            _wait_for(marker, proc)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert children
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert [p for p in alive if _is_cluster_process(p)] == []
    printed = err.read_text()  # one traceback, ending in KeyboardInterrupt, and nothing else
    assert printed.count("Traceback") == 1 and printed.rstrip().endswith("KeyboardInterrupt")
    assert printed.startswith("Traceback"), printed


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 90) -> None:
    """Block until a child process creates ``path`` (it has no other way to say so)."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, "the script ended before its graph started"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_given_client_is_not_closed(dask_client):
    ex = DaskExecutor(client=dask_client)
    ex.run(gx.plan(chain()), torch.randn(2, D))
    ex.close()
    ex.close()
    assert dask_client.status == "running"
    assert dask_client.submit(sum, [1, 2]).result() == 3


@pytest.mark.slow
def test_joined_by_address_and_by_config():
    g = fan_out()
    x = torch.randn(4, D)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(gx.plan(g), x)
    with process_cluster(n_workers=2) as cluster:
        with DaskExecutor(cluster.address) as ex:
            assert ex._cluster is None and len(ex.client.nthreads()) == 2
            assert_same(ex.run(g, x), expected)
        with dask.config.set({"scheduler-address": cluster.address}), DaskExecutor() as ex:
            assert ex.address == cluster.address and ex._cluster is None
            assert_same(ex.run(g, x), expected)
        assert cluster.scheduler.poll() is None  # closing the executor leaves the cluster up


def test_unreachable_scheduler_fails_within_timeout_naming_the_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(SchedulerUnreachableError, match=address.replace(".", r"\.")):
        DaskExecutor(address, timeout="1s")


# -- weights: sent once, again after a change -------------------------------------------------
def test_fingerprint_changes_on_load_state_dict_optimizer_step_and_mode():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout())
    fp = fingerprint(m)
    assert fingerprint(m) == fp
    m.load_state_dict(nn.Sequential(nn.Linear(4, 4), nn.Dropout()).state_dict())
    assert fingerprint(m) != fp
    fp = fingerprint(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert fingerprint(m) != fp
    fp = fingerprint(m)
    m.eval()
    assert fingerprint(m) != fp


def _weight_keys(client) -> set[str]:
    return {k for keys in client.has_what().values() for k in keys if k.startswith("weights-")}


def test_weights_sent_once_and_again_after_load_state_dict(dask_client):
    """4 x 4 MiB of weights; the second call sends < inputs + 64 KiB; load_state_dict re-sends."""
    g = gx.Graph("heavy")
    x = g.input("x")
    towers = [nn.Linear(1024, 1024) for _ in range(4)]
    g.output(g.node("sum", gx.add(), *[g.node(f"t{i}", t, x) for i, t in enumerate(towers)]))
    p = gx.plan(g)
    weights = sum(t.weight.nbytes + t.bias.nbytes for t in towers)
    xs = torch.randn(8, 1024)
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        first = ex.run(p, xs)
        keys = _weight_keys(dask_client)
        assert ex.scattered_nbytes == weights and len(keys) >= 4
        sent = ex.sent_bytes
        second = ex.run(p, xs)
        per_call = ex.sent_bytes - sent
        assert per_call < xs.nbytes + 64 * 1024 < weights / 10  # x is read by 4 tasks: sent once
        assert ex.scattered_nbytes == weights and _weight_keys(dask_client) == keys
        torch.testing.assert_close(first, second)

        state = {k: v + 1 for k, v in towers[0].state_dict().items()}
        towers[0].load_state_dict(state)
        third = ex.run(p, xs)
        assert ex.scattered_nbytes == weights + towers[0].weight.nbytes + towers[0].bias.nbytes
        assert _weight_keys(dask_client) - keys  # new copy of t0 on the workers
        torch.testing.assert_close(third, gx.SequentialExecutor().run(p, xs))


def test_cuda_like_tensors_are_rejected_clearly(dask_client):
    with DaskExecutor(client=dask_client) as ex, pytest.raises(ValueError, match="meta tensor"):
        ex.run(gx.plan(chain()), torch.empty(2, D, device="meta"))


# -- failures --------------------------------------------------------------------------------
def _explode(t):
    raise ZeroDivisionError("boom in the middle")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_node_error_names_node_with_remote_traceback_and_next_call_works(dask_client, schedule):
    g = gx.Graph("fails")
    x = g.input("x")
    g.output(g.node("add", gx.add(), g.node("ok", lin(), x), g.node("bad", _explode, x)))
    with DaskExecutor(client=dask_client, schedule=schedule, retries=0) as ex:
        with pytest.raises(gx.NodeError, match="node 'bad'") as info:
            ex.run(gx.plan(g), torch.randn(2, D))
        assert "boom in the middle" in str(info.value)
        assert "Remote traceback" in str(info.value) and "_explode" in str(info.value)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert info.value.node == "bad"
        kept = {f.key for f in ex._session.keepers.values()}  # held on purpose (dask/calls.py)
        left = [k for k in dask_client.futures if str(k).startswith(("ok", "bad", "add"))]
        assert set(left) <= kept
        assert ex.run(gx.plan(chain()), torch.randn(2, D)).shape == (2, D)


def _slow_identity(t, marker: str):
    """Say (by a file) which worker runs this, then work long enough to be killed."""
    part = Path(marker + ".part")  # written, then renamed: the test never reads a half file
    part.write_text(str(os.getpid()))
    part.replace(marker)
    time.sleep(3)
    return t * 2


@pytest.mark.slow
def test_worker_killed_mid_run_result_still_right(tmp_path):
    marker = str(tmp_path / "pid")
    g = gx.Graph("slow")
    x = g.input("x")
    lin_a = lin()
    a = g.node("a", lin_a, x)
    slow = g.node("slow", _slow_identity, a, kwargs={"marker": marker})
    g.output(g.node("head", lin(), slow))
    p = gx.plan(g, inline_below=0.0)
    xs = torch.randn(3, D)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(p, xs)
    os.remove(marker)  # written by the reference run, in this process
    with process_cluster(n_workers=2) as cluster, DaskExecutor(cluster.address) as ex:
        with ThreadPoolExecutor(1) as pool, torch.no_grad():
            fut = pool.submit(ex.run, p, xs)
            deadline = time.monotonic() + 60
            while not os.path.exists(marker):
                assert time.monotonic() < deadline
                if fut.done():
                    fut.result()  # it failed: show why
                time.sleep(0.05)
            victim = int(Path(marker).read_text())
            assert victim in {w.pid for w in cluster.workers}
            os.kill(victim, signal.SIGKILL)
            out = fut.result(timeout=120)
        assert_same(out, expected)


# -- map ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True])
def test_map_keeps_order_and_bounds_the_window(dask_client, split):
    g = fan_out()
    p = gx.plan(g)
    xs = [torch.randn(2, D) for _ in range(12)]
    source, pulled = counted(xs)
    window = 3
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        results = []
        for out in ex.map(p, source, window=window, progress=False, split=split):
            assert len(pulled) <= len(results) + window  # never more than `window` in flight
            results.append(out)
        reference = [gx.SequentialExecutor().run(p, x) for x in xs]
    assert len(results) == len(xs)
    for out, ref in zip(results, reference, strict=True):
        assert_same(out, ref)


def test_map_with_progress_bar_and_tuple_inputs(dask_client, capsys):
    g = gx.Graph("two_inputs")
    a, b = g.input("a"), g.input("b")
    g.output(g.node("sum", gx.add(), g.node("la", lin(), a), g.node("lb", lin(), b)))
    items = [(torch.randn(2, D), torch.randn(2, D)) for _ in range(4)]
    with DaskExecutor(client=dask_client) as ex, torch.no_grad():
        outs = list(ex.map(g, items, progress=True))
        expected = [gx.SequentialExecutor().run(g, *item) for item in items]
    for out, ref in zip(outs, expected, strict=True):
        assert_same(out, ref)
    assert "4/4" in capsys.readouterr().err


def test_map_node_error_cancels_in_flight(dask_client):
    g = gx.Graph("fails_sometimes")
    x = g.input("x")
    g.output(g.node("l", lin(), g.node("check", _fail_on_negative, x)))
    items = [torch.ones(1, D)] * 3 + [-torch.ones(1, D) * 1e6] + [torch.ones(1, D)] * 3
    with DaskExecutor(client=dask_client, retries=0) as ex:
        it = ex.map(g, items, window=2, progress=False)
        with pytest.raises(gx.NodeError, match="node 'check'"):
            list(it)
        assert not [k for k in dask_client.futures if str(k).startswith(("l-", "check"))]


def _fail_on_negative(t):
    if t.sum() < -1000:
        raise ValueError("negative input")
    return t


# -- layering --------------------------------------------------------------------------------------
def test_the_dask_modules_below_the_executor_do_not_import_it():
    """executor -> data / pipeline -> calls -> faults / placer -> ...: no module of the package
    imports the executor or the package's face (its __init__ imports the executor), not even
    for type checking."""
    import ast

    import graphexec.executors.dask as package

    folder = Path(package.__file__).parent
    for path in sorted(folder.glob("*.py")):
        if path.stem in ("__init__", "executor"):
            continue
        tree = ast.parse(path.read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported = {(n.level, n.module) for n in imports}
        face = {(1, "executor"), (2, "dask"), (0, "graphexec.executors.dask"),
                (0, "graphexec.executors.dask.executor")}  # fmt: skip
        assert not imported & face, path.name
        names = {a.name for n in imports if (n.level, n.module) == (1, None) for a in n.names}
        assert all((folder / f"{name}.py").is_file() and name != "executor" for name in names)
