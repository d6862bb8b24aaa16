"""The real-model suite: ``python -m benchmarks.bench_zoo [--quick] [--mode busy]``.

Every model of `benchmarks.zoo` (torchvision, timm, transformers; random weights, tiny
configs) is traced, planned and timed against its peers; the results go to
``benchmarks/results/zoo.md`` (``zoo_busy.md`` in busy mode, or ``--out``). Needs the ``zoo``
extra (``pip install -c constraints.txt -e '.[zoo]'``).

Modes
-----
``--mode quiet`` (default) measures the machine as it is: run it on a quiet one.
``--mode busy`` starts one background process that keeps one core busy (a pure-Python loop,
what a browser tab, a notebook or a CI neighbour does) before the first model is built and
stops it after the last, by its PID, on every path (an error, Ctrl-C, SIGTERM; it is also
told to die with the benchmark, `_busy_core`): plans are made, and every column timed, under
that load. Compare the default module with both eager columns there: torch's intra-op
threads wait for the one that lost its core, so eager at 1 thread can beat eager at 2.

Beside the timings, each model's default `GraphModule` is planned ``--replans`` more times in
fresh modules (``GRAPHEXEC_CACHE=0``: nothing reused): do the decisions come out the same
(issue 19: 5 of 5), and what does a first call cost in forward passes of the model (first
call / median eager forward)? One more module then plans with the cache directory the last
one filled (``GRAPHEXEC_CACHE_DIR``), for the first call a second process would pay.

Columns, each a ratio to eager at 2 intra-op threads (lower is better):

========================  ======================================================================
eager 2 thr               the model itself (1.00)
eager 1 thr               the model at 1 intra-op thread
fx GraphModule            the ``torch.fx`` GraphModule that gx traced from (same graph)
gx sequential             ``gx.SequentialExecutor().run(plan, ...)``, ``plan = gx.plan(g,
                          example_inputs=...)``: its planning time is the "planning" column
gx default                ``gx.GraphModule(g)`` after its first call (which plans, measuring)
gx default, hfuse off     ``gx.GraphModule(g, hfuse=False)``; not rebuilt when the default
                          plan has no ``hfuse:`` node (then it is the same plan)
gx export                 ``gx.GraphModule(gx.trace(torch.export.export(model, inputs)))``
gx example_inputs         ``gx.GraphModule(gx.trace(model, example_inputs=inputs))``: fx where it
                          traces, else export, the model itself "as it is" (issue 19)
gx tasks onnxruntime      ``gx.GraphModule(g, backend="onnxruntime")``; warnings are recorded
ORT seq / ORT par         the whole model exported to ONNX, ONNX Runtime (2 threads)
compile eager             ``torch.compile(model, backend="eager")``: Dynamo runs the graphs it
                          captured as they are, its own floor (guards, frame handling)
compile graphexec         ``torch.compile(model, backend="graphexec")`` (a
                          ``gx.compile_backend()`` per model, so its graphs can be reported)
compile inductor          ``torch.compile(model)``, inductor, default mode (not with
                          ``--quick`` or ``--no-compile``; ``--inductor-models`` picks models:
                          on 2 shared cores inductor takes minutes per model)
========================  ======================================================================

Each ``torch.compile`` contender compiles its own copy of the model's ``forward`` code
(`benchmarks.peers.own_frame`): Dynamo keeps compiled entries per code object, and entries of
other backends checked first would be counted against the one being timed.

The results also say which entry point imports which model at all (fx and ``gx.trace``,
``torch.export`` and ``gx.trace``, the Dynamo backend), with the error where one fails.

Timing is `benchmarks.suite.time_workload`'s (outputs checked against eager first, then
interleaved in a shuffled order per repetition, median), here under ``torch.no_grad()``.
``--quick`` (10 repetitions, 2 replans, no torch.compile) is a check that the harness works
end to end; read the ratios of a full run on a quiet machine (or a busy one, ``--mode busy``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import graphexec as gx

from . import peers, suite, zoo
from .run import machine
from .workloads import Workload
from .zoo_report import ONE_THREAD, REFERENCE, SHORT, Replans, Row, render, versions

COLUMNS = (REFERENCE, ONE_THREAD, "fx GraphModule", "gx sequential", "gx default",
           "gx default, hfuse off", "gx export", "gx example_inputs", "gx tasks onnxruntime",
           "ORT seq", "ORT par", "compile eager", "compile graphexec",
           "compile inductor")  # fmt: skip
#: Columns that run the fx-traced graph (its specialised placeholders appended, `_bind`).
FX_GRAPH = ("gx sequential", "gx default", "gx default, hfuse off", "gx tasks onnxruntime")
GRAD_MODE = torch.no_grad


def _bind(fn: Any, extra: tuple[Any, ...]) -> Any:
    """``fn`` called with the traced graph's specialised placeholders appended."""
    return fn if not extra else (lambda *a: fn(*a, *extra))


class _State:
    """A model's training flags and buffers, to catch a contender's setup changing them.

    Columns share the model's modules, so a setup that flips ``training`` or moves batch-norm
    statistics would change every column timed after it (and eager's reference): undo it, and
    say so in the results.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.flags = {m: m.training for m in model.modules()}
        self.buffers = {k: b.clone() for k, b in model.named_buffers()}

    def restore(self) -> str:
        """Put back what changed; a note saying what it was ("" when nothing did)."""
        flipped = [m for m, t in self.flags.items() if m.training != t]
        moved = [k for k, b in self.model.named_buffers() if not torch.equal(b, self.buffers[k])]
        if not flipped and not moved:
            return ""
        for m, t in self.flags.items():
            m.training = t
        with torch.no_grad():
            for k, b in self.model.named_buffers():
                b.copy_(self.buffers[k])
        return (f"its setup changed the model: {len(flipped)} modules' training flag, "
                f"{len(moved)} buffers (restored before timing)")  # fmt: skip


def contenders(zm: zoo.ZooModel, compile_peers: bool) -> tuple[list[suite.Contender], Row]:
    """Every column's contender for one traced model, and the row holding its plan."""
    torch.set_num_threads(2)
    row = Row(zm, zm.spec.key)
    x, g, gin = zm.inputs, zm.graph, zm.graph_inputs
    builders = [lambda: suite.Contender(REFERENCE, zm.model, 2),
                lambda: suite.Contender(ONE_THREAD, zm.model, 1)]  # fmt: skip
    if zm.fx_module is not None:
        builders.append(lambda: suite.Contender("fx GraphModule", zm.fx_module, 2))
    if g is not None:
        builders += [
            lambda: _sequential(g, gin, row),
            lambda: _default(g, gin, row),
            lambda: _unfused(g, gin, row),
            lambda: suite.module_contender(
                "gx tasks onnxruntime", g, gin, GRAD_MODE, backend="onnxruntime"
            ),
        ]
    if zm.export_graph is not None:
        builders.append(lambda: _exported(zm))
    if zm.example_graph is not None:
        builders.append(lambda: _example(zm, row))
    builders.append(lambda: suite.ort_contenders(zm.model, x))
    torch._dynamo.reset()  # a fresh cache (and recompile limit) per model
    builders += [lambda: _compiled("compile eager", zm, "eager"), lambda: _dynamo(zm, row)]
    if compile_peers:
        builders.append(lambda: _compiled("compile inductor", zm, "inductor"))
    state = _State(zm.model)
    out: list[suite.Contender] = []
    for build in builders:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = build()
        made = made if isinstance(made, list) else [made] if made is not None else []
        notes = [_warning_text(caught), state.restore()]
        for c in made:
            c.note = "; ".join(n for n in notes if n)
            if c.fn is not None and c.name in FX_GRAPH:
                c.fn = _bind(c.fn, zm.extra)
        out += made
    return out, row


def _warning_text(caught: list[warnings.WarningMessage]) -> str:
    """The first warning of graphexec's own categories, as one line (torch's are noise here)."""
    mine = [m for m in caught if m.category.__module__.startswith("graphexec")]
    if not mine:
        return ""
    return f"{mine[0].category.__name__}: {mine[0].message}".splitlines()[0][:200]


def _exported(zm: zoo.ZooModel) -> suite.Contender:
    """``gx.GraphModule`` of the exported graph; setup counts ``torch.export`` too."""
    c = suite.module_contender("gx export", zm.export_graph, zm.inputs, GRAD_MODE)
    c.setup_s += zm.export_s
    return c


def _example(zm: zoo.ZooModel, row: Row) -> suite.Contender:
    """``gx.GraphModule(gx.trace(model, example_inputs=inputs))``; setup counts the trace."""
    c = suite.module_contender("gx example_inputs", zm.example_graph, zm.inputs, GRAD_MODE)
    if c.fn is not None:
        row.example_plan = c.fn.plan
    row.example_first_s = c.setup_s
    c.setup_s += zm.example_s
    return c


def _compiled(name: str, zm: zoo.ZooModel, backend: Any) -> suite.Contender:
    """``torch.compile(model, backend=backend)`` on its own code object, first call timed."""
    own = peers.own_frame(zm.model)
    return suite.guard(name, 2, lambda: peers.torch_compile(own, zm.inputs, GRAD_MODE, backend))


def _dynamo(zm: zoo.ZooModel, row: Row) -> suite.Contender:
    """``backend="graphexec"``, as a `gx.compile_backend()` the row keeps (its graphs)."""
    row.dynamo = gx.compile_backend()
    c = _compiled("compile graphexec", zm, row.dynamo)
    c.close = row.dynamo.close
    return c


def _default(g: gx.Graph, gin: tuple[Any, ...], row: Row) -> suite.Contender:
    c = suite.module_contender("gx default", g, gin, GRAD_MODE)
    if c.fn is not None:
        row.plan = c.fn.plan
    return c


def _unfused(g: gx.Graph, gin: tuple[Any, ...], row: Row) -> suite.Contender | None:
    """``hfuse=False``, unless the default plan fused nothing (then it is the same plan)."""
    if row.plan is not None and not any(n.name.startswith("hfuse:") for n in row.plan.graph):
        row.same_as_default.append("gx default, hfuse off")
        return None
    return suite.module_contender("gx default, hfuse off", g, gin, GRAD_MODE, hfuse=False)


def _sequential(g: gx.Graph, gin: tuple[Any, ...], row: Row) -> suite.Contender:
    """The sequential executor on ``gx.plan(g, example_inputs=...)``, planning timed."""
    try:
        with GRAD_MODE():
            t0 = time.perf_counter()
            plan = gx.plan(g, example_inputs=gin)
            row.plan_s = time.perf_counter() - t0
    except Exception as exc:
        return suite.Contender("gx sequential", None, error=suite.error_text(exc))
    ex = gx.SequentialExecutor()
    return suite.Contender(
        "gx sequential", lambda *a: ex.run(plan, *a), 2, row.plan_s, close=ex.close
    )


def bench_model(key: str, reps: int, compile_peers: bool, replans: int = 0) -> Row:
    """Build, trace and time one model, then plan it ``replans`` times; a failure anywhere is
    recorded in the row."""
    t0 = time.perf_counter()
    try:
        zm = zoo.example(zoo.export(zoo.build(key)))
    except Exception as exc:
        return Row(None, key, error=f"build: {suite.error_text(exc)}")
    cs, row = contenders(zm, compile_peers)
    title = f"{key} ({zm.shape})"
    w = Workload(key, title, zm.graph, zm.model, None, zm.inputs)
    row.result = suite.time_workload(w, cs, reps=reps, warmup=2, grad_mode=GRAD_MODE)
    if replans and row.result.median.get(REFERENCE):
        g, gin = (zm.graph, zm.graph_inputs) if zm.graph is not None else (
            zm.example_graph, zm.inputs)  # fmt: skip
        if g is not None:
            row.replans = replan(g, gin, replans)
    row.wall_s = time.perf_counter() - t0
    return row


# -- planned N times: same decisions? first call in forward passes ------------------------------
def decision_key(plan: gx.Plan) -> str:
    """What a plan decided, without its measured numbers: the module as it is or the plan,
    overlapped or inline, horizontal fusion groups, compiled tasks, and a thread budget where
    the plan has one."""
    parts = ["as is" if plan.as_is is not None else "plan",
             "overlap" if plan.parallel else "one by one"]  # fmt: skip
    fused = sum(n.name.startswith("hfuse:") for n in plan.graph)
    if fused:
        parts.append(f"{fused} fused groups")
    if plan.compiled is not None:
        parts.append(f"{len(plan.compiled.tasks)} compiled tasks")
    for attr in ("threads", "thread_budget", "intra_op_threads"):  # the thread-budget decision
        if getattr(plan, attr, None) is not None:
            parts.append(f"{attr}={getattr(plan, attr)}")
    return ", ".join(parts)


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Environment variables set (None: unset) for the block, restored on every path."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_call(g: gx.Graph, inputs: tuple[Any, ...]) -> tuple[str, float]:
    """A fresh default `GraphModule`'s decisions and first-call seconds."""
    gm = gx.GraphModule(g)
    try:
        with GRAD_MODE():
            t0 = time.perf_counter()
            gm(*inputs)
            took = time.perf_counter() - t0
        return decision_key(gm.plan), took
    finally:
        gm.close()


def replan(g: gx.Graph, inputs: tuple[Any, ...], n: int) -> Replans:
    """``n`` fresh default modules with nothing cached (their decisions and first calls), then
    one that finds the cache directory the last of them filled."""
    out = Replans()
    torch.set_num_threads(2)
    try:
        with tempfile.TemporaryDirectory(prefix="gx-zoo-cache-") as cache:
            for i in range(n):
                last = i == n - 1  # fills the cache the warm module reads
                env = {"GRAPHEXEC_CACHE_DIR": cache, "GRAPHEXEC_CACHE": None if last else "0"}
                with _environ(**env):
                    key, took = _first_call(g, inputs)
                out.keys.append(key)
                out.first_s.append(took)
            with _environ(GRAPHEXEC_CACHE_DIR=cache, GRAPHEXEC_CACHE=None):
                out.cached_key, out.cached_s = _first_call(g, inputs)
    except Exception as exc:
        out.error = suite.error_text(exc)
    return out


# -- busy mode -------------------------------------------------------------------------------
_BUSY_LOOP = "while True:\n    pass\n"
_BUSY_NOTE = ("- mode: busy: one background process (PID {pid}) ran a pure-Python loop from "
              "before the first model was built to after the last was timed (one core busy); "
              "plans were made under it")  # fmt: skip


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGKILL when the benchmark dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere the ``finally`` below is the guard."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


@contextlib.contextmanager
def _busy_core() -> Iterator[subprocess.Popen]:
    """One background process spinning a pure-Python loop (one core's worth of load) for the
    block; killed by its PID and reaped on every path (SIGTERM to the benchmark raises
    SystemExit first, so this ``finally`` runs)."""
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)  # fmt: skip
    try:
        time.sleep(0.5)  # let it reach the loop before the first measurement
        if proc.poll() is not None:
            raise RuntimeError(f"the busy loop (PID {proc.pid}) exited with {proc.returncode}")
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _terminate_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every ``finally`` (the busy loop's too)


# -- the results file ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the results file; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="10 reps, no inductor")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per contender")
    ap.add_argument("--models", nargs="*", default=list(zoo.SPECS), choices=list(zoo.SPECS))
    ap.add_argument("--no-compile", action="store_true", help="skip the inductor peer")
    ap.add_argument("--inductor-models", nargs="*", default=None, choices=list(zoo.SPECS),
                    help="compile with inductor only these (default: every model, full mode; "
                    "inductor on 2 cores takes minutes per model)")  # fmt: skip
    ap.add_argument("--mode", choices=("quiet", "busy"), default="quiet",
                    help="quiet: the machine as it is (default); busy: one core kept busy by a "
                    "background pure-Python loop for the whole run")  # fmt: skip
    ap.add_argument("--replans", type=int, default=None,
                    help="plan each default GraphModule this many more times: same decisions? "
                    "first call in forward passes? (default 5; 2 with --quick)")  # fmt: skip
    ap.add_argument("--out", default=None,
                    help="results file (default: results/zoo.md, busy: zoo_busy.md)")  # fmt: skip
    args = ap.parse_args(argv)
    reps = args.reps or (10 if args.quick else 30)
    replans = args.replans if args.replans is not None else (2 if args.quick else 5)
    compile_peers = not (args.quick or args.no_compile)
    inductor = set(args.models if args.inductor_models is None else args.inductor_models)
    columns = [c for c in COLUMNS if compile_peers or c != "compile inductor"]
    name = "zoo.md" if args.mode == "quiet" else "zoo_busy.md"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    t_start = time.time()
    header = machine("benchmarks.bench_zoo", versions())  # load average before any busy loop
    previous = signal.signal(signal.SIGTERM, _terminate_cleanly)
    try:
        with contextlib.ExitStack() as stack:
            # every module plans under this run's conditions: decisions cached by another run
            # (a quiet one, or older rules) would be measured here as if made now
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="gx-zoo-run-"))
            stack.enter_context(_environ(GRAPHEXEC_CACHE_DIR=cache, GRAPHEXEC_CACHE=None))
            header.append("- decision cache: a fresh directory for this run")
            if args.mode == "busy":
                proc = stack.enter_context(_busy_core())
                header.append(_BUSY_NOTE.format(pid=proc.pid))
            else:
                header.append("- mode: quiet: no load added by the benchmark")
            header.append(f"- replans: {replans} fresh default modules per model")
            rows = [_bench_one(key, reps, compile_peers and key in inductor, replans)
                    for key in args.models]  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, header, reps, columns, time.time() - t_start))
    print(f"[zoo] wrote {out}")
    return 0


def _bench_one(key: str, reps: int, compile_peers: bool, replans: int) -> Row:
    print(f"[zoo] {key}", flush=True)
    row = bench_model(key, reps, compile_peers, replans)
    if row.result is not None:
        got = {SHORT.get(c, c): round(r, 2) for c in row.result.median
               if (r := row.result.ratio(c)) is not None}  # fmt: skip
        print(f"[zoo]   {row.wall_s:.0f} s: {got}", flush=True)
        if row.replans is not None:
            print(f"[zoo]   replans: {row.replans.summary()}", flush=True)
    else:
        print(f"[zoo]   {row.error}", flush=True)
    gc.collect()
    return row


if __name__ == "__main__":
    raise SystemExit(main())
