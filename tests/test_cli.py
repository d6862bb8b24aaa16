"""The ``graphexec`` command line, run as users run it: ``python -m graphexec`` in a subprocess.

Targets are the repository's examples (a file target and a graph-returning function) and
``graphexec.cli:demo_graph`` (a module target). Error cases must give one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from graphexec.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOWERS = str(ROOT / "examples" / "two_towers.py") + ":build_graph"
CNN = str(ROOT / "examples" / "inception_cnn.py") + ":model"


def graphexec(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graphexec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_help_for_every_command():
    top = graphexec("--help")
    assert top.returncode == 0
    for cmd in ("plan", "run", "viz", "bench", "demo"):
        assert cmd in top.stdout
    for cmd in ("plan", "run", "viz", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0


def test_plan_prints_and_draws(tmp_path):
    r = graphexec(
        "plan", TOWERS, "--out", str(tmp_path / "p.svg"), "--dot", str(tmp_path / "p.dot")
    )
    assert r.returncode == 0, r.stderr
    assert "Plan 'two_towers'" in r.stdout and "critical path" in r.stdout
    assert "<svg" in (tmp_path / "p.svg").read_text()
    assert (tmp_path / "p.dot").read_text().startswith('digraph "two_towers"')


def test_run_traced_module_with_profile(tmp_path):
    """An nn.Module target is traced, run on threads, checked against eager, profiled."""
    r = graphexec("run", CNN, "--executor", "threads", "--schedule", "levels",
                  "--input-shape", "2,3,16,16", "--profile", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "outputs match eager PyTorch" in r.stdout
    assert "tensor(2, 10)" in r.stdout
    assert "speedup" in r.stdout  # the summary
    Image.open(tmp_path / "gantt_threads.png").verify()
    doc = json.loads((tmp_path / "trace_threads.json").read_text())
    assert any(e["ph"] == "X" for e in doc["traceEvents"])


def test_viz_writes_every_picture(tmp_path):
    r = graphexec("viz", "graphexec.cli:demo_graph", "--input-shape", "16,512",
                  "--executor", "sequential", "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("plan.png", "plan.dot", "gantt_sequential.png", "trace_sequential.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_bench_table_and_figure(tmp_path):
    r = graphexec("bench", TOWERS, "--executors", "sequential,threads", "--repeat", "2",
                  "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sequential (dataflow)" in r.stdout and "threads (dataflow)" in r.stdout
    assert "1.00x" in r.stdout  # the baseline row
    Image.open(tmp_path / "compare.png").verify()


@pytest.mark.dask
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The README's main job: threads and an embedded Dask cluster, checked and pictured."""
    r = graphexec("demo", "--out", str(tmp_path), "--repeat", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for text in ("Plan 'demo'", "eager PyTorch", "threads (dataflow)", "dask (2 workers)",
                 "outputs match eager PyTorch"):  # fmt: skip
        assert text in out
    assert "FAILED" not in out
    for name in ("plan.png", "gantt_threads.png", "gantt_dask.png", "trace_dask.json",
                 "compare.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 1000, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "no/such/file.py:g"], "no such file: no/such/file.py"),
        (["plan", "graphexec.nosuchmodule:g"], "no module named 'graphexec.nosuchmodule'"),
        (["plan", f"{TOWERS[:-12]}:nope"], "has no attribute 'nope'"),
        (["plan", "graphexec.cli"], "TARGET must be"),
        (["plan", "graphexec.cli:EXECUTORS"], "is a tuple, not a Graph"),
        (["run", TOWERS, "--input-shape", "8,x"], "bad --input-shape '8,x'"),
        (["run", TOWERS, "--input-shape", "8,512", "--input-shape", "2"], "takes 1 input"),
        (["run", "graphexec.cli:demo_graph"], "no inputs for graphexec.cli:demo_graph"),
        (["run", TOWERS, "--input-shape", "8,7"], "NodeError"),  # wrong width: a node fails
        (["bench", TOWERS, "--executors", "threads,gpu"], "unknown executor 'gpu'"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_executor_is_a_usage_error_in_one_line():
    r = graphexec("run", TOWERS, "--executor", "gpu")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "invalid choice: 'gpu'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_in_a_subprocess():
    r = graphexec("plan", "missing.py:graph")
    assert r.returncode == 1
    assert r.stderr == "graphexec plan: error: no such file: missing.py\n"


def test_version_and_integer_inputs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("graphexec ")
    from graphexec.targets import parse_shape

    assert parse_shape("2,16:int64") == ((2, 16), torch.int64)
    with pytest.raises(Exception, match="dtype must be one of"):
        parse_shape("2,16:int8x")
