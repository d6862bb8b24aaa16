"""The README's walk-through (``graphexec demo``): two models, where overlap pays and where not.

What it shows
-------------
Running branches at once is not free speed: torch already spreads one large op over every
core, and a branch run beside another gets only its share of them. So the demo runs two
models and lets the measurements speak:

* `CatalogSearch`: one query searched in two catalogs of item embeddings, keeping the best
  100 items of each. Selecting the top k of one long row of scores runs on one core whatever
  torch's thread count (measured on 2 cores: one search takes as long with 1 thread as with
  2), so two searches at once use two cores where one after another use one: here overlap
  pays.
* `DemoNet`: three MLP towers of wide layers. Each large matrix product already keeps every
  core busy, so two towers at once divide the same cores: here overlap usually does not pay,
  and the plan runs the towers one after another (``print(plan)`` says what it measured).
* `TaskHeads`: one shared trunk and 128 small heads of one shape (one score per task, as in
  multi-label tagging), each head traced whole. Eager PyTorch calls the heads' 384 small
  layers one by one, each call mostly Python and dispatch; the plan may run the 128 heads as
  one batched call (horizontal fusion) and at one intra-op thread, each kept only where its
  trial wins: the model built to win on a small CPU, and the line says whether it did.

For each model, `run_demo` traces it, plans it with costs measured on one batch (the plan
tries overlap side by side and keeps it only if it wins), draws the plan, then runs it on
every CPU executor and an embedded two-worker Dask cluster: each output is checked against
eager PyTorch and each executor is timed in rounds against eager (`graphexec.timing.paired`).
The table gives the median speedup, the middle half of the rounds and a verdict that says
*within noise* when the rounds straddle 1x. The Gantt charts are the median of five profiled
runs; the comparison's bars are the table's own rounds (same reference, same verdicts). A
failing executor is reported and the other rows and pictures are still made.

The answer comes last, one line per model (`helped_line`): the threads row (what
`GraphModule` runs by default) against eager, with its verdict, and why, read from the plan's
measured decisions, never from what the model was built to show: the win a model is built for
can be lost on a busy machine or another core count, and then the line says what the plan
decided and that the rounds did not confirm it, with the load average of both moments.

One verdict per run: the table, the comparison's bars, each executor's ``summary_*.txt`` and
the closing line all read the same paired rounds (`speed_words`); a profiled run, slower by
its own bookkeeping and run at another moment, is never set against eager. A plan that runs
the traced module as it is runs the module in its timed calls; its profiled run records the
graph's tasks one by one, and its summary says so.

The steps::

    run_demo(out)
      -> _plan_and_draw      per model: plan (measured costs), <model>/plan.png, plan.dot
      -> _run_executors      per executor, both models: check, time against eager, profile
      -> _report             per model: timing table, what it cannot rank
      -> _write_pictures     per model: Gantt, Chrome trace and summary per executor, compare
      -> helped_line         per model: did graphexec help, and why
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .decisions import BUDGET, MODULE, OVERLAP, Decision, last
from .demo_models import Catalog, CatalogSearch, DemoNet, TaskHeads, demo_graph
from .executors import make_executor
from .executors.base import Executor
from .fx_import import trace as fx_trace
from .plans import Plan
from .profile import Timeline, median_run
from .targets import check_outputs
from .timing import Speedup, paired, speedup_table
from .tune import plan as make_plan

__all__ = ["helped_line", "run_demo", "run_summary", "speed_words"]
# the models live in `graphexec.demo_models`; docs, tests and the CLI import them from here too
__all__ += ["Catalog", "CatalogSearch", "DemoNet", "TaskHeads", "demo_graph"]

#: The executor row the one-line answer reads: `GraphModule`'s default.
DEFAULT_ROW = "threads (dataflow)"


@dataclass
class _Case:
    """One model of the demo and what happened to it; ``name`` is its one name (the class,
    the graph, the output folder)."""

    name: str
    about: str
    model: nn.Module
    x: torch.Tensor
    leaves: tuple[type, ...] = ()  # modules gx.trace keeps whole (a node each)
    plan: Plan | None = None
    expected: torch.Tensor | None = None
    rows: list[tuple[str, Speedup]] = field(default_factory=list)
    traces: dict[str, Timeline] = field(default_factory=dict)
    lanes: str = ""  # how the threads executor ran it: pool threads and their intra-op threads
    loads: tuple[float, float] | None = None  # load average while planning, while timing


def _cases(batch: int) -> list[_Case]:
    torch.manual_seed(0)
    return [
        _Case("CatalogSearch", "one query searched in two catalogs", CatalogSearch().eval(),
              torch.randn(1, 32), leaves=(Catalog,)),
        _Case("DemoNet", "three towers of wide layers", DemoNet().eval(),
              torch.randn(batch, 512)),
        _Case("TaskHeads", "one trunk, 128 small heads of one shape", TaskHeads().eval(),
              torch.randn(16, 64), leaves=(nn.Sequential,)),
    ]  # fmt: skip


def run_demo(out: Path, repeat: int = 15, dask: bool = True, batch: int = 256) -> int:
    """The README's walk-through: plan, draw, run on threads and Dask, check, time, save.

    Parameters
    ----------
    out : Path
        Folder for the pictures, the Chrome traces and the summaries (one subfolder per
        model).
    repeat : int
        Timed rounds per executor and model, each against eager PyTorch.
    dask : bool
        Also run on an embedded local Dask cluster (2 worker processes).
    batch : int
        Rows of the wide model's random input.

    Returns
    -------
    int
        0 when every run matched eager PyTorch.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = _cases(batch)
    print(f"graphexec demo: {len(cases)} models, planned on their inputs, run on every "
          f"executor, checked against eager PyTorch ({torch.get_num_threads()} intra-op "
          "threads)\n")  # fmt: skip
    with torch.no_grad():
        for i, case in enumerate(cases, 1):
            _plan_and_draw(i, case, out / case.name)
        print("running (each output checked against eager PyTorch):")
        failed = _run_executors(cases, _executors(dask), repeat)
    for i, case in enumerate(cases, 1):
        _report(i, case, repeat)
    files = _write_pictures(cases, out)
    print("pictures and traces (open trace_*.json in https://ui.perfetto.dev):")
    for f in files:
        print(f"   {f}")
    print(f"\ndid graphexec help? ({DEFAULT_ROW}, GraphModule's default, against eager PyTorch)")
    for case in cases:
        print("   " + _helped(case))
    if failed:
        print(f"graphexec demo: error: {', '.join(failed)} failed (see above)", file=sys.stderr)
    return 1 if failed else 0


def _plan_and_draw(i: int, case: _Case, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    graph = fx_trace(case.model, name=case.name, leaves=case.leaves)
    case.expected = case.model(case.x)
    case.loads = (_load(), 0.0)
    case.plan = make_plan(graph, (case.x,))  # costs measured, overlap tried on this batch
    print(f"{i}. {case.name} ({case.about}): {graph!r}, input {tuple(case.x.shape)}")
    print(f"{case.plan}\n")
    case.plan.draw(out / "plan.png")
    (out / "plan.dot").write_text(case.plan.to_dot(), encoding="utf-8")


def _executors(dask: bool) -> list[tuple[str, Callable[[], Executor]]]:
    """Row label and a factory per executor: each is made, used and closed in its turn."""
    executors: list[tuple[str, Callable[[], Executor]]] = [
        ("sequential", lambda: make_executor("sequential")),
        (DEFAULT_ROW, lambda: make_executor("threads")),
        ("threads (levels)", lambda: make_executor("threads", schedule="levels")),
    ]
    if dask:
        executors.append(
            ("dask (2 workers)", lambda: make_executor("dask", n_workers=2, dashboard_address=":0"))
        )
    return executors


def _run_executors(
    cases: list[_Case], executors: list[tuple[str, Callable[[], Executor]]], repeat: int
) -> list[str]:
    """Check, time and profile every model on each executor; the labels that failed."""
    failed: list[str] = []
    for label, factory in executors:
        t0 = time.perf_counter()
        try:
            with factory() as ex:
                for case in cases:
                    _run_one(label, ex, case, repeat)
        except Exception as exc:  # report, keep the other rows and pictures
            failed.append(label)
            line = (str(exc).strip().splitlines() or [""])[0]
            print(f"   {label:<20} FAILED: {type(exc).__name__}: {line}")
            continue
        if label.startswith("dask"):
            print(f"   (cluster start, runs and shutdown took {time.perf_counter() - t0:.1f} s)")
    print()
    return failed


def _run_one(label: str, ex: Executor, case: _Case, repeat: int) -> None:
    plan, x = case.plan, case.x
    got = ex.run(plan, x)
    print(f"   {label:<20} {case.name:<14} {check_outputs(got, case.expected)}")
    case.rows.append((label, paired(lambda: ex.run(plan, x), lambda: case.model(x), repeat)))
    if label == DEFAULT_ROW:
        case.loads = ((case.loads or (0.0, 0.0))[0], _load())
        n, k = getattr(ex, "workers", 0), getattr(ex, "intra_op_threads", 0)
        case.lanes = f"{n} pool threads of {k} intra-op thread{'s' * (k != 1)} each" if n else ""
    case.traces[label] = median_run([ex.run(plan, x, profile=True)[1] for _ in range(5)])


def _report(i: int, case: _Case, repeat: int) -> None:
    """The timing table of one model, with what it cannot rank (noise)."""
    print(f"{i}. {case.name}: {repeat} rounds per executor, each executor alternating with "
          "eager PyTorch (speedup above 1x: faster than eager)")  # fmt: skip
    print(speedup_table(case.rows, "eager PyTorch"))
    verdicts = {label: s.verdict for label, s in case.rows}
    noise = [label for label, v in verdicts.items() if v == "within noise"]
    if noise:
        print(f"   within noise (the middle half of the rounds straddles 1x, no ranking): "
              f"{', '.join(noise)}.")  # fmt: skip
    if any(label.startswith("dask") for label in verdicts):
        print(
            "   dask: every call moves tensors between processes; it pays for heavy nodes "
            "and for map() over many inputs, not for one call of a small model."
        )
    print()


def _helped(case: _Case) -> str:
    rows = dict(case.rows)
    return helped_line(case.name, case.plan, rows.get(DEFAULT_ROW), case.lanes, case.loads)


def helped_line(
    name: str,
    plan: Plan | None,
    speedup: Speedup | None,
    lanes: str = "",
    loads: tuple[float, float] | None = None,
) -> str:
    r"""One line: did the plan run faster than eager PyTorch, and why, from what was measured.

    The speed and its noise verdict come from ``speedup`` (paired rounds against eager); the
    why comes from the plan's measured decisions (overlap kept, or why not; the module run as
    it is). When the plan chose overlap and the rounds did not confirm it, the line says so,
    with the load average while planning and while timing.

    Parameters
    ----------
    name : str
        The model's name.
    plan : Plan or None
        The plan that ran (None: planning failed).
    speedup : Speedup or None
        Rounds of the plan against eager PyTorch (None: the executor failed).
    lanes : str
        How the executor ran the branches, in words (``"2 pool threads of 1 intra-op thread
        each"``).
    loads : (float, float), optional
        The 1-minute load average while planning and while timing.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("lin", nn.Linear(2, 2), g.input("x")))
    >>> line = helped_line("one", gx.plan(g), Speedup((1.0, 1.1, 0.9), (1.0, 1.0, 1.0)))
    >>> print(*line.split(": "), sep=":\n")
    one:
    no faster than eager (1.00x, within noise:
    middle half 0.95x-1.06x of 3 rounds):
    no two tasks can run at once, so the plan runs them one after another
    """
    if plan is None or speedup is None:
        return f"{name}: not timed (see the error above)"
    return f"{name}: {speed_words(speedup)}: {_why(plan, speedup.verdict, lanes, loads)}"


def speed_words(speedup: Speedup, than: str = "eager") -> str:
    """The rounds' verdict in words, with the median and the middle half of the rounds: the one
    phrase the closing line and each summary file say of a run.

    Examples
    --------
    >>> speed_words(Speedup((1.0, 1.0, 1.0), (1.5, 1.4, 1.6)))
    '1.50x faster than eager (middle half 1.45x-1.55x of 3 rounds)'
    >>> speed_words(Speedup((1.0, 1.0, 1.0), (1.0, 1.1, 0.9)))
    'no faster than eager (1.00x, within noise: middle half 0.95x-1.05x of 3 rounds)'
    """
    low, high = speedup.middle_half
    n = len(speedup.ratios)
    if speedup.verdict == "faster":
        return (f"{speedup.median:.2f}x faster than {than} (middle half {low:.2f}x-{high:.2f}x "
                f"of {n} rounds)")  # fmt: skip
    if speedup.verdict == "slower":  # the spread in the same words as the headline
        return (f"{1 / speedup.median:.2f}x slower than {than} (middle half "
                f"{1 / high:.2f}x-{1 / low:.2f}x slower, of {n} rounds)")  # fmt: skip
    return (f"no faster than {than} ({speedup.median:.2f}x, within noise: middle half "
            f"{low:.2f}x-{high:.2f}x of {n} rounds)")  # fmt: skip


def _why(plan: Plan, verdict: str, lanes: str, loads: tuple[float, float] | None) -> str:
    """The plan's measured decisions behind the speed, in one clause."""
    faster = verdict == "faster"
    compiled = "; compiled tasks kept" if plan.compiled else ""
    seen = ""
    if loads is not None:
        seen = f" (load average {loads[0]:.1f} while planning, {loads[1]:.1f} while timing)"
    levers = "; ".join(_levers(plan))
    if plan.parallel:
        ran = f"the plan ran {plan.max_width} branches at once" + (f" on {lanes}" if lanes else "")
        ran += f"; {levers}" if levers else ""
        kept = last(plan.decisions, OVERLAP)
        trial = kept.detail["why"] if kept is not None else "overlap was kept"
        if faster:
            return f"{ran} (its trial: {trial}){compiled}"
        return f"{ran}, which its trial found faster ({trial}), but these rounds did not{seen}"
    if plan.as_is is not None:
        said = last(plan.decisions, MODULE)
        why = plan.one_by_one_why or "no plan beat it (measured)"
        return f"graphexec {said}" if said else f"graphexec runs the traced module as it is: {why}"
    if levers:  # what the plan changed, each kept by a trial of its own
        if faster:
            return f"{levers}{compiled}"
        return f"{levers}{compiled}; its trials found that faster, but these rounds did not{seen}"
    if plan.one_by_one_why:
        verb = "so graphexec runs them one after another" + (
            ", with every core for each task, as eager does" if not faster else ""
        )
        return f"branches could overlap, but {plan.one_by_one_why}; {verb}{compiled}"
    return f"no two tasks can run at once, so the plan runs them one after another{compiled}"


def _levers(plan: Plan) -> list[str]:
    """What a kept measured decision changed in how the plan runs the graph's ops, in words
    and with the decision's own sentence: layers batched into one call (horizontal fusion),
    a thread budget of its own. Read from the records, never from what a model was built for.
    """
    said: list[str] = []
    groups = [d for d in plan.fusion if d.choice == "fused" and d.detail.get("members")]
    trial = next((d for d in reversed(plan.fusion) if not d.detail.get("members")), None)
    if groups and (trial is None or trial.choice == "fused"):
        sizes = "/".join(str(n) for n in sorted({len(d.detail["members"]) for d in groups}))
        many = len(groups) != 1
        what = (f"{len(groups)} group{'s' * many} of {sizes} identical modules ran as one "
                f"batched call{' each' * many}")  # fmt: skip
        said.append(what + (f" (horizontal fusion {_sentence(trial)})" if trial else ""))
    budget = last(plan.decisions, BUDGET)
    if plan.thread_budget is not None and budget is not None:
        k = plan.thread_budget
        said.append(f"it ran at {k} intra-op thread{'s' * (k != 1)} (its {_sentence(budget)})")
    return said


def _sentence(record: Decision) -> str:
    return str(record).rstrip(".")


def _load() -> float:
    """The 1-minute load average (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _write_pictures(cases: list[_Case], out: Path) -> list[Path]:
    """Per model: the plan, every executor's Gantt chart, Chrome trace and summary, and the
    comparison figure."""
    from .viz import compare

    files: list[Path] = []
    for case in cases:
        folder = out / case.name
        files += [folder / "plan.png", folder / "plan.dot"]
        rows = dict(case.rows)
        for label, trace in case.traces.items():
            tag = label.split()[0] + ("_levels" if "levels" in label else "")
            files += _save_run(trace, folder, tag, rows.get(label))
        if case.traces:  # the bars are the table's rounds: same reference, same verdicts
            compare(case.traces, folder / "compare.png", speedups=dict(case.rows))
            files.append(folder / "compare.png")
    return files


def _save_run(trace: Timeline, out: Path, tag: str, speedup: Speedup | None) -> list[Path]:
    """One executor's Gantt chart, Chrome trace and summary; the summary's line against eager
    is the table's (`run_summary`)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"gantt_{tag}.png", out / f"trace_{tag}.json", out / f"summary_{tag}.txt"]
    trace.gantt(files[0])
    trace.to_chrome(files[1])
    files[2].write_text(run_summary(trace, speedup) + "\n", encoding="utf-8")
    return files


def run_summary(trace: Timeline, speedup: Speedup | None) -> str:
    r"""A profiled run's summary, and against eager the verdict of the timed rounds: the same
    words as the table and the closing line (`speed_words`), never this run's wall against
    eager's median, which would be a second measurement with a verdict of its own.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("lin", nn.Linear(2, 2), g.input("x")))
    >>> _, trace = gx.SequentialExecutor().run(gx.plan(g), torch.randn(1, 2), profile=True)
    >>> last = run_summary(trace, Speedup((1.0, 1.0, 1.0), (1.0, 1.1, 0.9))).splitlines()[-1]
    >>> print(*last.split(": "), sep=":\n")
      vs eager        no faster than eager (1.00x, within noise:
    middle half 0.95x-1.05x of 3 rounds), from the timed rounds (not this profiled run)
    """
    rows = [trace.summary()]
    if speedup is not None:
        if trace.plan.as_is is not None:
            rows.append("  timed calls     ran the traced module as it is; this profiled run "
                        "recorded its graph's tasks one by one instead")  # fmt: skip
        rows.append(f"  vs eager        {speed_words(speedup)}, from the timed rounds "
                    "(not this profiled run)")  # fmt: skip
    return "\n".join(rows)
