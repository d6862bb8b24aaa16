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
from graphexec.decisions import CACHE, CHECK
from graphexec.dynamo import Backend

from . import suite, zoo
from .run import fmt_ms

REFERENCE = suite.REFERENCE
ONE_THREAD = "eager 1 thr"
SHORT = {"gx default, hfuse off": "hfuse off", "gx tasks onnxruntime": "gx tasks ORT",
         "gx example_inputs": "gx example_inputs"}  # fmt: skip
#: The default modules compared with both eager columns (`_eager_table`).
DEFAULTS = ("gx default", "gx example_inputs")
#: Lines of ``print(plan)`` that say what the planner decided (inline, overlap, fusion).
_DECISION_PREFIXES = ("work ", "decision: one by one", "decision: runs the traced module",
                      "horizontal fusion", "not run")  # fmt: skip


@dataclass
class Replans:
    """A model's default module planned again in fresh modules (`benchmarks.bench_zoo.replan`):
    each one's decisions (without numbers) and first-call seconds, then one that found the
    cache directory filled."""

    keys: list[str] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    cached_key: str = ""
    cached_s: float | None = None
    error: str = ""

    def same(self) -> int:
        """How many plans made the most common decisions."""
        return max((self.keys.count(k) for k in set(self.keys)), default=0)

    def summary(self) -> str:
        if self.error:
            return f"error: {self.error}"
        kinds = "; ".join(f"{self.keys.count(k)}x {k}" for k in dict.fromkeys(self.keys))
        return f"{self.same()}/{len(self.keys)} same ({kinds})"


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
    example_plan: gx.Plan | None = None  # ``gx.trace(model, example_inputs=)``'s module's
    example_first_s: float | None = None  # its first call (plans), trace excluded
    replans: Replans | None = None


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
        elif p.one_by_one_why:
            sched = "one by one: overlap measured slower"
        else:
            sched = "one by one: nothing to overlap"
        plan_s = "–" if row.plan_s is None else f"{row.plan_s:.2f}"
        lines.append(
            head + f"{zm.trace_s:.2f} | {nodes} | {len(p.tasks)} ({inline}) | {len(p.levels)} | "
            f"{p.max_width} | {p.amdahl:.2f} | {plan_s} | {sched} |"
        )
    return lines


def _decisions(rows: list[Row], limit: int = 6) -> list[str]:
    lines = []
    for row in rows:
        if row.plan is None and row.example_plan is None and not (row.dynamo and row.dynamo.graphs):
            continue
        lines.append(f"- **{row.key}**")
        if row.plan is not None:
            lines += _plan_lines(row.plan, limit)
        if row.example_plan is not None:
            how = row.zm.example_graph.imported_by if row.zm and row.zm.example_graph else "?"
            lines.append(f"  - `gx example_inputs`, imported by {how}:")
            lines += ["  " + ln for ln in _plan_lines(row.example_plan, limit)]
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
    kept = ([d for d in graph.plan.decisions if d.step not in (CHECK, CACHE)]
            if graph.plan else [])  # fmt: skip
    return f"graph {graph.name} ({size}): run by graphexec" + "".join(f"; {d}" for d in kept)


# -- which entry point imports which model -----------------------------------------------------
ENTRY_POINTS = ("fx → `gx.trace`", "`torch.export` → `gx.trace`",
                "`gx.trace(model, example_inputs=)`", '`backend="graphexec"`')  # fmt: skip


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
    example_cell = (f"✗ {zm.example_error}" if zm.example_graph is None else
                    f"✗ {failed['gx example_inputs']}" if "gx example_inputs" in failed else
                    f"✓ {nodes(zm.example_graph)} by {_route(zm.example_graph)}")  # fmt: skip
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
    return [fx_cell, export_cell, example_cell, dynamo_cell]


def _route(g: gx.Graph) -> str:
    """``torch.fx`` or ``torch.export`` (why: the first words of fx's error)."""
    how = g.imported_by or "?"
    return how if len(how) <= 90 else how[:87] + "..."


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
    lines = ["| model | " + " | ".join(ENTRY_POINTS) + " |",
             "|---" * (len(ENTRY_POINTS) + 1) + "|"]  # fmt: skip
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


def _eager_table(rows: list[Row]) -> list[str]:
    """The default modules against both eager columns (ratios of medians), and the better of
    the two: on a busy machine eager at 1 thread can beat eager at 2."""
    head = []
    for d in DEFAULTS:
        head += [f"{d} ÷ eager 2 thr", f"{d} ÷ eager 1 thr", f"{d} ÷ better eager"]
    lines = ["| model | eager 2 thr (ms) | eager 1 thr ÷ 2 thr | " + " | ".join(head) + " |",
             "|---" * (len(head) + 3) + "|"]  # fmt: skip
    worst: dict[str, list[float]] = {h: [] for h in head}
    for row in rows:
        r = row.result
        if r is None or REFERENCE not in r.median:
            continue
        e2, e1 = r.median[REFERENCE], r.median.get(ONE_THREAD)
        cells = [fmt_ms(e2), f"{e1 / e2:.2f}" if e1 else "–"]
        for d in DEFAULTS:
            got = r.median.get(d)
            ratios = [got / e2 if got else None, got / e1 if got and e1 else None,
                      got / min(e2, e1 or e2) if got else None]  # fmt: skip
            for h, v in zip(head[len(cells) - 2 :], ratios, strict=False):
                if v is not None:
                    worst[h].append(v)
            cells += ["–" if v is None else f"{v:.2f}" for v in ratios]
        lines.append(f"| {row.key} | " + " | ".join(cells) + " |")
    lines.append("| worst | | | " + " | ".join(f"{max(v):.2f}" if v else "–"
                                               for v in worst.values()) + " |")  # fmt: skip
    return lines


def _planning_table(rows: list[Row]) -> list[str]:
    """Planned N times: same decisions? First calls in forward passes of eager at 2 threads."""
    lines = ["| model | same decisions | decisions | first call, forward passes (median; "
             "range) | from the filled cache dir | gx example_inputs first call |",
             "|---" * 6 + "|"]  # fmt: skip
    for row in rows:
        r, rp = row.result, row.replans
        forward = r.median.get(REFERENCE) if r is not None else None
        if rp is None or not forward:
            continue
        if rp.error:
            lines.append(f"| {row.key} | error: {rp.error} |" + " – |" * 4)
            continue
        passes = [t / forward for t in rp.first_s]
        first = (f"{statistics.median(passes):.0f} ({min(passes):.0f}–{max(passes):.0f})"
                 if passes else "–")  # fmt: skip
        cached = "–" if rp.cached_s is None else f"{rp.cached_s / forward:.1f}"
        if rp.cached_key and rp.keys and rp.cached_key != rp.keys[-1]:
            cached += f" (decided: {rp.cached_key})"
        example = ("–" if row.example_first_s is None
                   else f"{row.example_first_s / forward:.0f}")  # fmt: skip
        kinds = "; ".join(f"{rp.keys.count(k)}x {k}" for k in dict.fromkeys(rp.keys))
        lines.append(f"| {row.key} | {rp.same()}/{len(rp.keys)} | {kinds} | {first} | "
                     f"{cached} | {example} |")  # fmt: skip
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
             "## The default modules against both eager columns", "",
             "Ratios of medians. `better eager` is the faster of eager at 2 and at 1 intra-op "
             "thread in this run (issue 19's targets: ≤ 1.03 against eager at default threads "
             "on a quiet machine; ≤ 1.15 against the better eager with one core busy). "
             "`gx example_inputs` is `gx.GraphModule(gx.trace(model, example_inputs=inputs))`.",
             "", *_eager_table(rows), "",
             "## Planned again: same decisions? first call in forward passes", "",
             "Each model's default module planned again in fresh modules with nothing cached "
             "(`GRAPHEXEC_CACHE=0`); decisions compared without their measured numbers. A first "
             "call is its seconds over the median eager forward at 2 threads (issue 19: ≤ 30; "
             "≤ 3 from the cache). `from the filled cache dir`: one more module, in this "
             "process, with `GRAPHEXEC_CACHE_DIR` the last one filled.", "",
             *_planning_table(rows), "",
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
