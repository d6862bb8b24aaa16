"""The real-model suite's results file: tables of a list of `Row`s (``benchmarks/results/zoo.md``).

`benchmarks.bench_zoo` builds and times the models; this module only turns its rows into
Markdown: ratios to eager, traces and plans, the planner's decisions, the Dynamo path, which
entry point imports which model, correctness, setup times and problems.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any

import graphexec as gx
from graphexec.dynamo import Backend

from . import suite, zoo
from .run import fmt_ms

REFERENCE = suite.REFERENCE
SHORT = {"gx default, hfuse off": "hfuse off", "gx tasks onnxruntime": "gx tasks ORT"}
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


def versions() -> str:
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
