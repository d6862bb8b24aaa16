"""A newcomer's mistakes get errors that name the input or node and say what to do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphexec as gx


def _pair() -> tuple[gx.Graph, gx.Ref]:
    g = gx.Graph("pair")
    x = g.input("x")
    a = g.node("a", nn.Linear(4, 4), x)
    g.output(g.node("s", gx.add(), a, g.node("b", nn.Linear(4, 4), x)))
    return g, a


@pytest.mark.parametrize("kind", ["sequential", "threads"])
@pytest.mark.parametrize("bad", ["ref", "numpy"])
def test_wrong_run_inputs_are_named_before_anything_runs(kind, bad):
    g, a = _pair()
    value = a if bad == "ref" else np.zeros((2, 4), dtype=np.float32)
    with gx.make_executor(kind) as ex, pytest.raises(TypeError, match="input 'x' is a"):
        ex.run(gx.plan(g), value)
    with pytest.raises(TypeError, match="input 'x' is a"):
        gx.SequentialExecutor().run(gx.plan(g), x=value)


@pytest.mark.parametrize("call", [gx.GraphModule, gx.plan, gx.SequentialExecutor().run])
def test_a_module_where_a_graph_belongs_says_trace_it(call):
    with pytest.raises(TypeError, match=r"expects a gx.Graph.*gx.trace\(module\)"):
        call(nn.Linear(2, 2))


class _Forgot(nn.Module):
    def forward(self, x):
        x * 2  # noqa: B018 - the forgotten return


@pytest.mark.parametrize("read", [True, False])
def test_a_forgotten_return_is_blamed_on_the_node_that_returned_none(read):
    g = gx.Graph("none")
    x = g.input("x")
    forgot = g.node("forgot", _Forgot(), x)
    g.output(g.node("lin", nn.Linear(4, 4), forgot) if read else forgot)
    with gx.GraphModule(g) as gm, pytest.raises(gx.NodeError, match="node 'forgot'.*returned None"):
        gm(torch.randn(2, 4))


def test_inputs_packed_in_one_list_say_to_unpack_them():
    g = gx.Graph("two")
    x, y = g.input("x"), g.input("y")
    g.output(g.node("s", gx.add(), x, y))
    pair = [torch.ones(2), torch.ones(2)]
    unpack = r"missing y; got one list of 2: .*run\(plan, \*inputs\)"
    with pytest.raises(gx.ArityError, match=unpack):
        gx.SequentialExecutor().run(gx.plan(g), pair)
    torch.testing.assert_close(gx.SequentialExecutor().run(gx.plan(g), *pair), 2 * pair[0])


@pytest.mark.parametrize("read", [True, False])
@pytest.mark.parametrize("inline_below", [0.0, 1.0], ids=["tasks", "inline"])
def test_every_executor_blames_the_node_that_returned_none(executor, read, inline_below):
    """On every executor, on the generated straight-line path (all inline) and the task path:
    the node that returned None is named, not the node that read it, and a None graph output
    does not come back silently."""
    g = gx.Graph("none")
    x = g.input("x")
    forgot = g.node("forgot", _Forgot(), x)
    g.output(g.node("lin", nn.Linear(4, 4), forgot) if read else forgot)
    who = "node 'lin' reads" if read else "is a graph output"
    plan = gx.plan(g, inline_below=inline_below)
    for profile in (False, True):
        with pytest.raises(gx.NodeError, match=f"node 'forgot'.*returned None, which {who}"):
            executor.run(plan, torch.randn(2, 4), profile=profile)


def test_nodes_read_like_torch_calls():
    """A list input and keyword arguments, as ``torch.cat([a, b], dim=1)`` is written."""
    g = gx.Graph("cat")
    x = g.input("x")
    a, b = g.node("a", nn.Linear(4, 3), x), g.node("b", nn.Linear(4, 5), x)
    fuse = g.node("fuse", torch.cat, [a, b], dim=1)
    g.output(g.node("total", gx.sum(dim=1), fuse))
    t = torch.randn(2, 4)
    with torch.no_grad():
        expected = torch.cat([g.nodes["a"].fn(t), g.nodes["b"].fn(t)], dim=1).sum(1)
        for kind in ("sequential", "threads"):
            with gx.make_executor(kind) as ex:
                torch.testing.assert_close(ex.run(gx.plan(g, inline_below=0), t), expected)
    with pytest.raises(gx.GraphError, match="dim given twice"):
        g.node("again", torch.cat, [a, b], kwargs={"dim": 1}, dim=1)


def test_an_in_place_module_without_mutates_warns():
    g = gx.Graph("relu")
    x = g.input("x")
    with pytest.warns(gx.InPlaceWarning, match="node 'r'.*mutates=\\[0\\]"):
        g.node("r", nn.ReLU(inplace=True), x)
    g.node("ok", nn.ReLU(inplace=True), x, mutates=[0])  # declared: no warning


def test_star_import_does_not_shadow_builtins():
    scope: dict = {}
    exec("from graphexec import *", scope)  # noqa: S102
    assert "sum" not in scope and "tuple" not in scope and "Graph" in scope


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_removes_what_the_build_left(tmp_path):
    """`make clean` left setuptools' build/ and graphexec.egg-info/ behind. Run on a copy of
    the Makefile, so the real tree (and its .venv) is left alone."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    made = ["build/lib/graphexec", "graphexec.egg-info", "out/demo", ".venv/bin", ".pytest_cache"]
    for d in made + ["graphexec"]:  # the Makefile lists graphexec/*.py when read
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "graphexec" / "keep.py").write_text("")
    drop = ("VENV", "BASE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")  # nothing points elsewhere
    env = {k: v for k, v in os.environ.items() if k not in drop}
    make = ["make", "--no-print-directory", "clean", "VENV=.venv", "BASE=.venv-base"]
    r = subprocess.run(make, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [d for d in made if (tmp_path / d.split("/")[0]).exists()] == []
    assert (tmp_path / "graphexec" / "keep.py").exists()  # the sources stay


UNGUARDED = """
import torch, torch.nn as nn
import graphexec as gx

g = gx.Graph("saved")
x = g.input("x")
g.output(g.node("lin", nn.Linear(4, 4), x))
with gx.DaskExecutor(n_workers=2, dashboard_address=None) as ex:
    print(ex.run(gx.plan(g), torch.randn(2, 4)).shape)
"""


@pytest.mark.dask
@pytest.mark.slow
@pytest.mark.parametrize("guarded", [False, True])
def test_a_saved_snippet_without_a_main_guard_gets_one_clear_error(tmp_path, guarded):
    """Dask's spawned workers re-run an unguarded script, which starts a cluster again: the
    user gets one error that names the script and says what to write, not pages of worker
    tracebacks; the same script with the guard runs."""
    body = UNGUARDED
    if guarded:
        body = body.replace("with gx.", 'if __name__ == "__main__":\n  with gx.').replace(
            "\n    print", "\n      print"
        )
    script = tmp_path / "saved.py"
    script.write_text(body)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=240, cwd=tmp_path)  # fmt: skip
    if guarded:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "torch.Size([2, 4])" in r.stdout
        return
    assert r.returncode == 1
    assert "UnguardedMainError" in r.stderr and str(script) in r.stderr
    assert 'if __name__ == "__main__":' in r.stderr
    assert len(r.stderr.splitlines()) < 30, r.stderr


@pytest.mark.dask
@pytest.mark.parametrize(
    ("address", "cause"),
    [("tcp://no-such-host.invalid:8786", "the host name does not resolve"),
     ("tcp://127.0.0.1:1", "connection refused")],
)  # fmt: skip
def test_an_unreachable_scheduler_says_the_real_cause_at_once(address, cause):
    """Not "timed out" after the whole timeout: the cause as soon as it is known."""
    t0 = time.monotonic()
    from graphexec.executors.dask import SchedulerUnreachableError

    with pytest.raises(SchedulerUnreachableError, match=f"{re.escape(address)}: {cause}"):
        gx.DaskExecutor(address=address, timeout="60s")
    assert time.monotonic() - t0 < 30  # far below the timeout: nothing waited for it


@pytest.mark.zoo
def test_torchvision_imports_where_the_docs_trace_it():
    """docs/entry_points.md and docs/executors/cuda.md trace torchvision models. In the venv
    ``make`` builds, PyPI's torchvision is a CUDA build beside the CPU torch and failed to
    import ("operator torchvision::nms does not exist"); tools/torchvision_hook.py, linked in
    by ``make``, lets it import (a fresh process: the import happens once)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (the zoo extra)")
    code = (
        "import torch, torchvision, timm, graphexec as gx\n"
        "m, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32)\n"
        "torch.testing.assert_close(gx.SequentialExecutor().run(gx.plan(gx.trace(m)), x), m(x))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
