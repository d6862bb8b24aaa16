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
gx tasks onnxruntime      ``gx.GraphModule(g, backend="onnxruntime")``; warnings are recorded
ORT seq / ORT par         the whole model exported to ONNX, ONNX Runtime (2 threads)
torch.compile             inductor, default mode (not with ``--quick``)
========================  ======================================================================

Timing is `benchmarks.suite.time_workload`'s (outputs checked against eager first, then
interleaved in a shuffled order per repetition, median), here under ``torch.no_grad()``.
``--quick`` (10 repetitions, no torch.compile) is a check that the harness works end to end;
read the ratios of a full run on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import graphexec as gx

from . import peers, suite, zoo
from .run import fmt_ms, machine
from .workloads import Workload

REFERENCE = suite.REFERENCE
COLUMNS = (REFERENCE, "fx GraphModule", "gx sequential", "gx default", "gx default, hfuse off",
           "gx tasks onnxruntime", "ORT seq", "ORT par", "torch.compile")  # fmt: skip
SHORT = {"gx default, hfuse off": "hfuse off", "gx tasks onnxruntime": "gx tasks ORT"}
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
    builders.append(lambda: suite.ort_contenders(zm.model, x))
    if compile_peers:
        torch._dynamo.reset()  # a fresh cache (and recompile limit) per model
        builders.append(
            lambda: suite.guard(
                "torch.compile", 2, lambda: peers.torch_compile(zm.model, x, GRAD_MODE)
            )
        )
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
            if c.fn is not None and c.name.startswith("gx "):
                c.fn = _bind(c.fn, zm.extra)
        out += made
    return out, row


def _warning_text(caught: list[warnings.WarningMessage]) -> str:
    """The first warning of graphexec's own categories, as one line (torch's are noise here)."""
    mine = [m for m in caught if m.category.__module__.startswith("graphexec")]
    if not mine:
        return ""
    return f"{mine[0].category.__name__}: {mine[0].message}".splitlines()[0][:200]


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
        zm = zoo.build(key)
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
        if row.plan is None:
            continue
        picked = [ln for ln in str(row.plan).splitlines() if ln.startswith(_DECISION_PREFIXES)]
        fusion = [ln for ln in picked if ln.startswith("horizontal fusion")]
        shown = [ln for ln in picked if not ln.startswith("horizontal fusion")] + fusion[:limit]
        lines.append(f"- **{row.key}**")
        lines += [f"  - {ln}" for ln in shown]
        if len(fusion) > limit:
            n_fused = sum(": fused" in ln for ln in fusion)
            lines.append(f"  - … {len(fusion) - limit} more fusion groups ({n_fused} of "
                         f"{len(fusion)} fused in all)")  # fmt: skip
    return lines


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
             "## Traces and plans (the default module's plan; planning time of `gx.plan(g, "
             "example_inputs=...)`, measuring included)", "",
             *_trace_table(rows), "",
             "## The planner's decisions (lines of `print(plan)`)", "",
             *_decisions(rows), "",
             "## Correctness: max abs difference to eager (✗: not allclose, rtol 1e-3, "
             "atol 1e-4)", "",
             *_correctness_table(rows, columns), "",
             "## Setup seconds (plan / first call / export / compile; excluded from the runs)", "",
             *_setup_table(rows, columns), "",
             "## Errors, mismatches, warnings", "",
             *_problems(rows), "",
             f"Total benchmark time: {total_s:.0f} s.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the results file; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="10 reps, no torch.compile")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per contender")
    ap.add_argument("--models", nargs="*", default=list(zoo.SPECS), choices=list(zoo.SPECS))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo.md"))
    args = ap.parse_args(argv)
    reps = args.reps or (10 if args.quick else 30)
    compile_peers = not (args.quick or args.no_compile)
    columns = [c for c in COLUMNS if compile_peers or c != "torch.compile"]
    t_start = time.time()
    header = machine("benchmarks.bench_zoo", _versions())
    rows = []
    for key in args.models:
        print(f"[zoo] {key}", flush=True)
        row = bench_model(key, reps, compile_peers)
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
