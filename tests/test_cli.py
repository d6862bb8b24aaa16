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
import torch.nn as nn
from PIL import Image

import graphexec as gx
from graphexec.cli import main
from graphexec.demo import helped_line
from graphexec.timing import Speedup
from tests.records import as_is, one_by_one, overlapped

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = ("faster", "slower", "within noise")
TOWERS = str(ROOT / "examples" / "two_towers.py") + ":build_graph"
CNN = str(ROOT / "examples" / "inception_cnn.py") + ":model"


def graphexec(*args: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graphexec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
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
    """An nn.Module target is traced, planned on its inputs as bench and viz plan it, warmed
    up, run on threads, checked against eager, profiled and timed side by side with eager."""
    r = graphexec("run", CNN, "--executor", "threads", "--schedule", "levels",
                  "--input-shape", "2,3,16,16", "--profile", str(tmp_path),
                  "--repeat", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "outputs match eager PyTorch" in r.stdout
    assert "tensor(2, 10)" in r.stdout
    assert "costs measured on the inputs" in r.stdout and "first call" in r.stdout
    assert "eager PyTorch beside it" in r.stdout and "(middle half of 3 rounds)" in r.stdout
    assert "speedup" in r.stdout  # the summary
    # one verdict per run: the summary (printed and saved) gives the table's, from the same
    # paired rounds, not a second one from the single profiled call
    row = next(line for line in r.stdout.splitlines() if "(middle half of" not in line
               and line.strip().startswith("threads") and "ms" in line)  # fmt: skip
    verdict = row.split(")")[-1].strip()
    said = next(line for line in r.stdout.splitlines() if "vs eager" in line)
    assert f") {verdict}: the median of 3 paired rounds" in said, (row, said)
    assert said.strip() in (tmp_path / "summary_threads.txt").read_text()
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
    r = graphexec("bench", TOWERS, "--executors", "sequential,threads", "--repeat", "3",
                  "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sequential (dataflow)" not in r.stdout and "threads (dataflow)" in r.stdout
    assert "sequential beside it" in r.stdout  # a graph target: no eager twin
    rows = [line for line in r.stdout.splitlines() if line.endswith(VERDICTS)]
    assert [row.split()[0] for row in rows] == ["sequential", "threads"]  # one row each
    Image.open(tmp_path / "compare.png").verify()


@pytest.mark.dask
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The README's main job: threads and an embedded Dask cluster, checked and pictured, and
    one line per model that says whether graphexec helped, in the words each model's
    summary_threads.txt uses too (one verdict per run, from the same rounds)."""
    # 2 min on a 2-core machine with load average 10 (three models, a Dask cluster): the
    # subprocess may take most of pytest's 300 s, not 180
    r = graphexec("demo", "--out", str(tmp_path), "--repeat", "3", timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    models = ["CatalogSearch", "DemoNet", "TaskHeads"]
    for text in (*(f"Plan '{m}'" for m in models), "eager PyTorch", "threads (dataflow)",
                 "dask (2 workers)", "outputs match eager PyTorch"):  # fmt: skip
        assert text in out
    assert out.count("outputs match eager PyTorch") == 12  # 3 models x 4 executors
    assert "FAILED" not in out and "expected:" not in out  # no canned claim
    answer = out[out.index("did graphexec help?") :].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in answer] == models
    for model, line in zip(models, answer, strict=True):
        assert any(v in line for v in ("faster than eager", "slower than eager", "no faster"))
        assert "rounds" in line
        said = line.split(": ", 1)[1].split(" rounds)")[0] + " rounds)"
        summary = (tmp_path / model / "summary_threads.txt").read_text(encoding="utf-8")
        assert f"vs eager        {said}, from the timed rounds" in summary, (line, summary)
    for model in models:
        for name in ("plan.png", "gantt_threads.png", "gantt_dask.png", "trace_dask.json",
                     "compare.png"):  # fmt: skip
            assert (tmp_path / model / name).stat().st_size > 1000, (model, name)


def _two_branch_plan() -> gx.Plan:
    g = gx.Graph("two")
    x = g.input("x")
    g.output(
        g.node("s", gx.add(), g.node("a", nn.Linear(4, 4), x), g.node("b", nn.Linear(4, 4), x))
    )
    return gx.plan(g, inline_below=0.0)


FAST = Speedup((1.0, 1.0, 1.0, 1.0), (1.4, 1.5, 1.4, 1.3))
NOISE = Speedup((1.0, 1.0, 1.0, 1.0), (1.1, 0.9, 1.0, 1.05))


def test_the_demo_line_says_what_the_plan_decided_and_what_was_measured():
    """The line is built from the plan's decisions and the measured rounds: a kept overlap
    that won says so with the trial; one the rounds did not confirm says so with the load; a
    plan that runs one after another or the module as it is gives the plan's own reason."""
    p = _two_branch_plan()
    assert p.max_width == 2
    kept = overlapped(p, "overlapping ran 1.40x faster")
    line = helped_line("m", kept, FAST, "2 pool threads of 1 intra-op thread each")
    assert line.startswith("m: 1.40x faster than eager (middle half")
    assert "2 branches at once on 2 pool threads" in line
    assert "overlapping ran 1.40x faster" in line
    line = helped_line("m", kept, NOISE, loads=(0.3, 2.5))
    assert "no faster than eager" in line and "within noise" in line
    assert "but these rounds did not (load average 0.3 while planning, 2.5 while timing)" in line
    serial = one_by_one(p, "overlapping branches ran 1.12x slower")
    line = helped_line("m", serial, NOISE)
    assert "overlapping branches ran 1.12x slower; so graphexec runs them one after" in line
    module = as_is(serial, print, "the best plan ran 1.07x slower than it")
    assert helped_line("m", module, NOISE).endswith(
        "graphexec runs the traced module as it is: the best plan ran 1.07x slower than it"
    )
    reworded = as_is(serial, print)  # no decision of its own: the overlap's words
    assert "runs the traced module as it is: overlapping branches ran" in helped_line(
        "m", reworded, NOISE
    )
    assert helped_line("m", p, None) == "m: not timed (see the error above)"
    assert "\n" not in line
    slow = Speedup((1.0, 1.0, 1.0, 1.0), (0.8, 0.9, 0.85, 0.9))  # spread in the headline's words
    assert helped_line("m", serial, slow).startswith(
        "m: 1.14x slower than eager (middle half 1.11x-1.19x slower, of 4 rounds)"
    )


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
    usage = any(a.startswith("--input-shape") or a == "--executors" for a in args)
    assert main(args) == (2 if usage and "NodeError" not in message else 1)
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


def test_usage_errors_exit_2_and_name_the_command():
    """A bad flag value is a usage error (exit 2), like an unknown flag, and names the command."""
    for args, text in (
        (["run", TOWERS, "--repeat", "-1"], "invalid non-negative integer"),
        (["run", TOWERS, "--input-shape", "0,3"], "bad --input-shape"),
        (["bench", TOWERS, "--executors", "gpu"], "unknown executor 'gpu'"),
        # a verdict needs 3 paired rounds: --repeat 0 ran one and gave verdicts from it
        (["bench", TOWERS, "--repeat", "0"], "0 is too few rounds for a verdict: give at least 3"),
        (["demo", "--repeat", "2"], "2 is too few rounds for a verdict: give at least 3 ("),
        (["run", TOWERS, "--repeat", "1"], "give at least 3, or 0 to time nothing"),
    ):
        r = graphexec(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(f"graphexec {args[0]}") and text in r.stderr
        assert r.stderr.count("\n") == 1


SEVERAL = """
import torch, torch.nn as nn

class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        return self.lin(x)

class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x, y):
        return self.lin(x) + y

class Own(Two):
    example_inputs = (torch.randn(3, 16), torch.randn(3, 4))
"""


def test_example_inputs_per_target(tmp_path, capsys):
    """A file with several targets gives each its own inputs (a dict by target name, or the
    target's attribute); a count that does not fit says where the inputs came from."""
    (tmp_path / "several.py").write_text(
        SEVERAL + "example_inputs = {'One': (torch.randn(2, 8),),"
        " 'Two': lambda: (torch.randn(2, 16), torch.randn(2, 4))}\n"
    )
    for name, shape in (("One", "tensor(2, 4)"), ("Two", "tensor(2, 4)"), ("Own", "(3, 4)")):
        assert main(["run", f"{tmp_path / 'several.py'}:{name}"]) == 0, name
        out = capsys.readouterr().out
        assert shape in out and "outputs match eager PyTorch" in out, (name, out)
    (tmp_path / "shared.py").write_text(SEVERAL + "example_inputs = (torch.randn(2, 8),)\n")
    assert main(["run", f"{tmp_path / 'shared.py'}:Two"]) == 1
    err = capsys.readouterr().err
    assert "shared.py:example_inputs has 1 input(s) but graph 'Two' takes 2 (x, y)" in err


def test_no_fuse_is_one_task_per_costly_node():
    """--no-fuse turns chain and horizontal fusion off: a task holds one node that costs a
    hand-off, plus the cheap nodes folded into it."""
    from graphexec.cli import _parser, _plan
    INLINE_BELOW = gx.Policy().inline_below
    from graphexec.targets import load_target, target_inputs

    target = load_target(CNN)
    inputs = target_inputs(target, None)
    plans = {flag: _plan(target, inputs, _parser().parse_args(["plan", CNN, *flag]))
             for flag in ((), ("--no-fuse",))}  # fmt: skip

    def costly(plan, task):
        return [n for n in task.nodes if plan.node_costs[n] >= INLINE_BELOW]

    assert any(len(costly(plans[()], t)) > 1 for t in plans[()].tasks.values())  # fused
    assert all(len(costly(plans[("--no-fuse",)], t)) <= 1
               for t in plans[("--no-fuse",)].tasks.values())  # fmt: skip


def test_help_says_what_demo_and_bench_do(capsys):
    for cmd in ("demo", "bench"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "two multi-branch models" in text and "a multi-branch model" not in text
    assert "sequential, threads, cuda, dask, auto (default sequential,threads)" in text


def test_demo_without_matplotlib_says_so_before_planning(monkeypatch, tmp_path, capsys):
    """A base install has no matplotlib: the demo says so at once, not after planning and
    running both models for a minute."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "pip install 'graphexec[viz]'" in err


MARKER = """
import pathlib, torch, torch.nn as nn

class Marks(nn.Linear):
    def forward(self, x):
        if isinstance(x, torch.Tensor):  # run, not traced (fx passes a Proxy)
            pathlib.Path(__file__).with_name("ran").touch()
        return super().forward(x)

model = nn.Sequential(Marks(4, 4))
example_inputs = (torch.randn(2, 4),)
"""


@pytest.mark.dask
@pytest.mark.parametrize("cmd", ["run", "bench"])
def test_an_unreachable_dask_address_fails_before_planning(tmp_path, cmd):
    """Planning measures the model (seconds on a real one): a wrong --address must not wait
    for it. The target's module leaves a file behind when anything runs it."""
    (tmp_path / "m.py").write_text(MARKER)
    how = ["--executor", "dask"] if cmd == "run" else ["--executors", "dask"]
    r = graphexec(cmd, f"{tmp_path / 'm.py'}:model", *how, "--address", "tcp://127.0.0.1:1")
    assert r.returncode == 1
    assert "tcp://127.0.0.1:1" in r.stderr and "connection refused" in r.stderr
    assert not (tmp_path / "ran").exists(), "planned (ran the model) before joining the cluster"
