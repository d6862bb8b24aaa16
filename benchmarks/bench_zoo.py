"""The real-model suite: ``python -m benchmarks.bench_zoo [--quick]``.

Every model of `benchmarks.zoo` (torchvision, timm, transformers; random weights, tiny
configs) is traced, planned and timed against its peers; the results go to
``benchmarks/results/zoo.md`` (or ``--out``). Needs the ``zoo`` extra
(``pip install -c constraints.txt -e '.[zoo]'``).

Columns, each a ratio to eager at 2 intra-op threads (lower is better):

========================  ======================================================================
eager 2 thr               the model itself (1.00)
fx GraphModule            the ``torch.fx`` GraphModule that gx traced from (same graph)
gx sequential             ``gx.SequentialExecutor().run(plan, ...)``, ``plan = gx.plan(g,
                          example_inputs=...)``: its planning time is the "planning" column
gx default                ``gx.GraphModule(g)`` after its first call (which plans, measuring)
gx default, hfuse off     ``gx.GraphModule(g, hfuse=False)``; not rebuilt when the default
                          plan has no ``hfuse:`` node (then it is the same plan)
gx export                 ``gx.GraphModule(gx.trace(torch.export.export(model, inputs)))``
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
``--quick`` (10 repetitions, no torch.compile) is a check that the harness works end to end;
read the ratios of a full run on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import graphexec as gx
from graphexec.dynamo import Backend

from . import peers, suite, zoo
from .run import fmt_ms, machine
from .workloads import Workload

REFERENCE = suite.REFERENCE
COLUMNS = (REFERENCE, "fx GraphModule", "gx sequential", "gx default", "gx default, hfuse off",
           "gx export", "gx tasks onnxruntime", "ORT seq", "ORT par", "compile eager",
           "compile graphexec", "compile inductor")  # fmt: skip
SHORT = {"gx default, hfuse off": "hfuse off", "gx tasks onnxruntime": "gx tasks ORT"}
#: Columns that run the fx-traced graph (its specialised placeholders appended, `_bind`).
FX_GRAPH = ("gx sequential", "gx default", "gx default, hfuse off", "gx tasks onnxruntime")
GRAD_MODE = torch.no_grad
#: Lines of ``print(plan)`` that say what the planner decided (inline, overlap, fusion).
_DECISION_PREFIXES = ("work ", "runs inline", "horizontal fusion", "not run")


@dataclass
class Row:
    """One model's outcome: the built entry, its timings, the default module's plan."""

    zm: zoo.ZooModel | None
    key: str
    result: suite.Result | None = None
    plan: gx.Plan | None = None
    plan_s: float | None = None
    error: str = ""
    wall_s: float = 0.0
    same_as_default: list[str] = field(default_factory=list)
    dynamo: Backend | None = None  # the graphexec backend's graphs and plans


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
    builders = [lambda: suite.Contender(REFERENCE, zm.model, 2)]
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


def bench_model(key: str, reps: int, compile_peers: bool) -> Row:
    """Build, trace and time one model; a failure anywhere is recorded in the row."""
    t0 = time.perf_counter()
    try:
        zm = zoo.export(zoo.build(key))
    except Exception as exc:
        return Row(None, key, error=f"build: {suite.error_text(exc)}")
    cs, row = contenders(zm, compile_peers)
    title = f"{key} ({zm.shape})"
    w = Workload(key, title, zm.graph, zm.model, None, zm.inputs)
    row.result = suite.time_workload(w, cs, reps=reps, warmup=2, grad_mode=GRAD_MODE)
    row.wall_s = time.perf_counter() - t0
    return row


# -- the results file ------------------------------------------------------------------------
def _versions() -> str:
    tv, timm, tf = zoo.import_zoo()
    return f", torchvision {tv.__version__}, timm {timm.__version__}, transformers {tf.__version__}"


def _ratio_table(rows: list[Row], columns: list[str]) -> list[str]:
    lines = ["| model | family | eager 2 thr (ms) | "
             + " | ".join(SHORT.get(c, c) for c in columns[1:]) + " |",
             "|---" * (len(columns) + 2) + "|"]  # fmt: skip
    for row in rows:
        r = row.result
        if r is None:
            lines.append(f"| {row.key} | – | {row.error} |" + " – |" * (len(columns) - 1))
            continue
        cells = []
        for c in columns[1:]:
            if c in r.median:
                cells.append(f"{r.ratio(c):.2f}")
            elif c in row.same_as_default and "gx default" in r.median:
                cells.append(f"= default ({r.ratio('gx default'):.2f})")
            elif c in r.error:
                cells.append("mismatch" if r.error[c].startswith("output differs") else "error")
            else:
                cells.append("–")
        ref = fmt_ms(r.median.get(REFERENCE))
        lines.append(f"| {row.key} | {row.zm.spec.family} | {ref} | " + " | ".join(cells) + " |")
    return lines


def _trace_table(rows: list[Row]) -> list[str]:
    lines = ["| model | library | input | params | tracer | trace s | gx nodes | tasks (inline) "
             "| levels | widest | amdahl | planning s | schedule |",
             "|---" * 13 + "|"]  # fmt: skip
    for row in rows:
        zm = row.zm
        if zm is None:
            lines.append(f"| {row.key} | – | – | – | – | – | {row.error} |" + " – |" * 6)
            continue
        head = (f"| {row.key} | {zm.spec.library} | {zm.shape} | {zm.params / 1e6:.1f} M | "
                f"{zm.spec.tracer} | ")  # fmt: skip
        if zm.graph is None:
            lines.append(head + f"{zm.trace_s:.2f} | not traced: {zm.trace_error} |" + " – |" * 6)
            continue
        p = row.plan
        nodes = sum(not n.is_input for n in zm.graph)
        if p is None:
            lines.append(head + f"{zm.trace_s:.2f} | {nodes} | plan failed |" + " – |" * 5)
            continue
        inline = sum(t.inline for t in p.tasks.values())
        if p.parallel:
            sched = "overlaps branches"
        elif p.serial_reason:
            sched = "inline: overlap measured slower"
        else:
            sched = "inline: nothing to overlap"
        plan_s = "–" if row.plan_s is None else f"{row.plan_s:.2f}"
        lines.append(
            head + f"{zm.trace_s:.2f} | {nodes} | {len(p.tasks)} ({inline}) | {len(p.levels)} | "
            f"{p.max_width} | {p.amdahl:.2f} | {plan_s} | {sched} |"
        )
    return lines


def _decisions(rows: list[Row], limit: int = 6) -> list[str]:
    lines = []
    for row in rows:
        if row.plan is None and not (row.dynamo and row.dynamo.graphs):
            continue
        lines.append(f"- **{row.key}**")
        if row.plan is not None:
            lines += _plan_lines(row.plan, limit)
        for graph in row.dynamo.graphs if row.dynamo else ():
            lines.append(f'  - `backend="graphexec"`, {_dynamo_state(graph)}')
    return lines


def _plan_lines(plan: gx.Plan, limit: int) -> list[str]:
    picked = [ln for ln in str(plan).splitlines() if ln.startswith(_DECISION_PREFIXES)]
    fusion = [ln for ln in picked if ln.startswith("horizontal fusion")]
    shown = [ln for ln in picked if not ln.startswith("horizontal fusion")] + fusion[:limit]
    lines = [f"  - {ln}" for ln in shown]
    if len(fusion) > limit:
        n_fused = sum(": fused" in ln for ln in fusion)
        lines.append(f"  - … {len(fusion) - limit} more fusion groups ({n_fused} of "
                     f"{len(fusion)} fused in all)")  # fmt: skip
    return lines


def _dynamo_state(graph: Any) -> str:
    """One Dynamo graph: planned and run by graphexec, or handed back, and why."""
    size = f"{sum(not n.is_input for n in graph.graph)} nodes" if graph.graph else "not imported"
    if graph.fallback:
        return (
            f"graph {graph.name} ({size}): could not be planned, runs as Dynamo gave it: "
            + (graph.fallback.splitlines()[0][:200])
        )
    if graph.handed_back:
        return f"graph {graph.name} ({size}): handed back to Dynamo: {graph.handed_back}"
    kept = [d for d in graph.plan.decisions if "kept" in d] if graph.plan else []
    return f"graph {graph.name} ({size}): run by graphexec" + "".join(f"; {d}" for d in kept)


# -- which entry point imports which model -----------------------------------------------------
ENTRY_POINTS = ("fx → `gx.trace`", "`torch.export` → `gx.trace`", '`backend="graphexec"`')


def _entries(row: Row) -> list[str]:
    """One cell per entry point: ✓ with what it made, or ✗ with the error."""
    zm, r = row.zm, row.result
    if zm is None:
        return [f"✗ {row.error}"] * len(ENTRY_POINTS)
    failed = r.error if r is not None else {}

    def nodes(g: gx.Graph) -> str:
        return f"{sum(not n.is_input for n in g)} nodes"

    fx_cell = (
        f"✗ {zm.trace_error}"
        if zm.graph is None
        else f"✗ {failed['gx default']}"
        if "gx default" in failed
        else f"✓ {nodes(zm.graph)}"
    )
    export_cell = (f"✗ {zm.export_error}" if zm.export_graph is None else
                   f"✗ {failed['gx export']}" if "gx export" in failed else
                   f"✓ {nodes(zm.export_graph)}")  # fmt: skip
    graphs = row.dynamo.graphs if row.dynamo else []
    if "compile graphexec" in failed:
        dynamo_cell = f"✗ {failed['compile graphexec']}"
    else:
        run = sum(g.handed_back is None for g in graphs)
        back = sum(g.handed_back is not None and not g.fallback for g in graphs)
        unplanned = sum(bool(g.fallback) for g in graphs)
        dynamo_cell = (f"✓ {len(graphs)} graph{'s' * (len(graphs) != 1)}: {run} run by "
                       f"graphexec, {back} handed back" +
                       (f", {unplanned} could not be planned" if unplanned else ""))  # fmt: skip
    return [fx_cell, export_cell, dynamo_cell]


def _dynamo_table(rows: list[Row]) -> list[str]:
    """The Dynamo path against eager and against Dynamo's own floor, paired per repetition."""
    pairs = [("compile eager", REFERENCE), ("compile graphexec", REFERENCE),
             ("compile graphexec", "compile eager"), ("compile inductor", REFERENCE)]  # fmt: skip
    head = ["compile eager ÷ eager", "compile graphexec ÷ eager",
            "compile graphexec ÷ compile eager", "inductor ÷ eager"]  # fmt: skip
    lines = ["| model | Dynamo graphs | " + " | ".join(head) + " |", "|---" * 6 + "|"]
    got: dict[int, list[float]] = {i: [] for i in range(len(pairs))}
    for row in rows:
        r = row.result
        if r is None:
            continue
        cells = []
        for i, (a, b) in enumerate(pairs):
            v = r.paired(a, b)
            cells.append("–" if v is None else f"{v:.2f}")
            if v is not None:
                got[i].append(v)
        graphs = row.dynamo.graphs if row.dynamo else []
        run = sum(g.handed_back is None for g in graphs)
        lines.append(f"| {row.key} | {len(graphs)} ({run} run by graphexec) | "
                     + " | ".join(cells) + " |")  # fmt: skip
    means = [f"{statistics.geometric_mean(v):.2f}" if v else "–" for v in got.values()]
    lines.append("| geomean | | " + " | ".join(means) + " |")
    slower = [row.key for row in rows if row.result is not None
              and (row.result.paired("compile graphexec", REFERENCE) or 0) > 1.0]  # fmt: skip
    lines += ["", f"`compile graphexec` slower than eager (paired median above 1.00): "
              f"{', '.join(slower) or 'none'}."]  # fmt: skip
    return lines


def _entry_table(rows: list[Row]) -> list[str]:
    lines = ["| model | " + " | ".join(ENTRY_POINTS) + " |", "|---" * 4 + "|"]
    for row in rows:
        lines.append(f"| {row.key} | " + " | ".join(c.replace("|", "/") for c in _entries(row))
                     + " |")  # fmt: skip
    none = [row.key for row in rows if not any(c.startswith("✓") for c in _entries(row))]
    verdict = (
        f"Every model imports through at least one entry point ({len(rows)} of {len(rows)})."
        if not none
        else f"No entry point imports: {', '.join(none)}."
    )
    return [*lines, "", verdict]  # fmt: skip


def _correctness_table(rows: list[Row], columns: list[str]) -> list[str]:
    lines = ["| model | " + " | ".join(SHORT.get(c, c) for c in columns[1:]) + " |",
             "|---" * len(columns) + "|"]  # fmt: skip
    for row in rows:
        r = row.result
        if r is None:
            continue
        cells = []
        for c in columns[1:]:
            if c in r.max_err:
                bad = c in r.error
                cells.append(f"{r.max_err[c]:.1e}" + (" ✗" if bad else ""))
            else:
                cells.append("–")
        lines.append(f"| {row.key} | " + " | ".join(cells) + " |")
    return lines


def _setup_table(rows: list[Row], columns: list[str]) -> list[str]:
    cols = [c for c in columns[2:]]
    lines = ["| model | " + " | ".join(SHORT.get(c, c) for c in cols) + " | model total |",
             "|---" * (len(cols) + 2) + "|"]  # fmt: skip
    for row in rows:
        r = row.result
        if r is None:
            continue
        cells = [f"{r.setup[c]:.2f}" if r.setup.get(c) else "–" for c in cols]
        lines.append(f"| {row.key} | " + " | ".join(cells) + f" | {row.wall_s:.0f} |")
    return lines


def _problems(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        if row.error:
            lines.append(f"- {row.key}: {row.error}")
        if row.zm is not None and row.zm.trace_error:
            lines.append(f"- {row.key}: not traced ({row.zm.trace_error}); eager-only peers ran")
        if row.result is None:
            continue
        for c, msg in row.result.error.items():
            lines.append(f"- {row.key} / {c}: {msg}")
        for c, msg in row.result.note.items():
            lines.append(f"- {row.key} / {c} (warning): {msg}")
    return lines or ["- none"]


def render(rows: list[Row], header: list[str], reps: int, columns: list[str], total_s: float):
    """The results file's text."""
    lines = ["# graphexec real-model suite", "", *header,
             f"- repetitions: {reps} (median, interleaved in a shuffled order, after 2 warm-up "
             "runs), all under `torch.no_grad()`; random weights, tiny configs "
             "(`benchmarks/zoo.py`)", "",
             "## Ratio to eager at 2 intra-op threads (median; lower is better)", "",
             "A cell says `mismatch` when the output differed from eager's (not timed), `error` "
             "when the column could not be built or run (both listed below).", "",
             *_ratio_table(rows, columns), "",
             "## Which entry point imports which model", "",
             "✓: imported, and its output equals eager's (the cells of the table above); a "
             "Dynamo graph is *handed back* when its plan did not beat it (it then runs as "
             "Dynamo gave it: `compile graphexec` costs what `compile eager` costs).", "",
             *_entry_table(rows), "",
             "## The Dynamo path: `torch.compile(backend=\"graphexec\")` against eager and "
             "against Dynamo's own floor", "",
             "Each cell is the median over repetitions of one column's time over the other's "
             "in the same repetition (runs moments apart: steadier under changing load than "
             "the ratio of medians above). `compile eager` is Dynamo with the graphs it "
             "captured run as they are: its guards and frame handling, which no backend can "
             "remove. A handed-back graph runs that same code, so `compile graphexec ÷ compile "
             "eager` is 1.00 up to noise unless graphexec runs a graph.", "",
             *_dynamo_table(rows), "",
             "## Traces and plans (the default module's plan; planning time of `gx.plan(g, "
             "example_inputs=...)`, measuring included)", "",
             *_trace_table(rows), "",
             "## The planner's decisions (lines of `print(plan)`; what became of each "
             "Dynamo graph)", "",
             *_decisions(rows), "",
             "## Correctness: max abs difference to eager (✗: not allclose, rtol 1e-3, "
             "atol 1e-4)", "",
             *_correctness_table(rows, columns), "",
             "## Setup seconds (plan / first call / export / compile; excluded from the runs)", "",
             *_setup_table(rows, columns), "",
             "## Errors, mismatches, warnings", "",
             *_problems(rows), "",
             f"Total benchmark time: {total_s:.0f} s; load average at the end: "
             f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.", ""]  # fmt: skip
    return "\n".join(lines)


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
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo.md"))
    args = ap.parse_args(argv)
    reps = args.reps or (10 if args.quick else 30)
    compile_peers = not (args.quick or args.no_compile)
    inductor = set(args.models if args.inductor_models is None else args.inductor_models)
    columns = [c for c in COLUMNS if compile_peers or c != "compile inductor"]
    t_start = time.time()
    header = machine("benchmarks.bench_zoo", _versions())
    rows = []
    for key in args.models:
        print(f"[zoo] {key}", flush=True)
        row = bench_model(key, reps, compile_peers and key in inductor)
        rows.append(row)
        if row.result is not None:
            got = {SHORT.get(c, c): round(row.result.ratio(c), 2) for c in row.result.median}
            print(f"[zoo]   {row.wall_s:.0f} s: {got}", flush=True)
        else:
            print(f"[zoo]   {row.error}", flush=True)
        gc.collect()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, header, reps, columns, time.time() - t_start))
    print(f"[zoo] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
