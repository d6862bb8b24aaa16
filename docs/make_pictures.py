"""Every picture in docs/img, and the numbers docs/pictures.md quotes beside them::

    make pictures                               # = python docs/make_pictures.py
    python docs/make_pictures.py --repeats 9    # more runs per timed picture

What it decides, and why:

* **A timed picture is the median run of several** (`graphexec.profile.median_run`, after a
  warm-up run), never one run: on a shared machine one run can show a 10 ms stall that no other
  run has, and a picture of it would tell the reader something false about the schedule.
* **The text beside a picture is written from the timeline drawn**: every caption and the
  summary quoted in docs/pictures.md sits between ``<!-- pictures:KEY -->`` and
  ``<!-- /pictures:KEY -->`` and is rewritten here, so the numbers always match the picture.
* **Plans are made as the docs' code makes them** (``gx.plan(graph, example_inputs)``): what
  the planner decides on the machine that runs this script is what the pictures show, and the
  captions say what it decided (for instance that a plan runs one by one).
* The models are the example scripts' (``examples/``), imported, so the pictures and the
  examples cannot drift apart; the README's picture is the demo's `CatalogSearch`, the model
  built for a measured win on a CPU (two top-k searches, one core each).
* **A comparison's bars are timed rounds against eager PyTorch** (`graphexec.timing.paired`,
  the numbers `graphexec bench` tables), and its caption is the demo's one line
  (`graphexec.demo.helped_line`): faster or not, and why, from what was measured. A row that
  runs a plan the measured planner rejected says so in its label.
* ``--only KEY,...`` remakes some pictures (``catalog``, ``two_towers``, ``inception``,
  ``image_text``, ``dask``, ``compiled``) and rewrites only their text.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import graphexec as gx
from graphexec import viz
from graphexec.profile import Timeline, median_run
from graphexec.timing import paired
from graphexec.units import format_seconds, lane_label, speed_words

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
PAGE = ROOT / "docs" / "pictures.md"
#: Pages whose ``<!-- pictures:KEY -->`` blocks are rewritten (a key may sit on several).
PAGES = (PAGE, ROOT / "README.md", ROOT / "docs" / "index.md")


# -- running --------------------------------------------------------------------------------
def example(name: str) -> Any:
    """Import ``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_runs(
    runs: Mapping[str, tuple[Any, gx.Plan]],
    inputs: Sequence[Any],
    repeats: int,
    eager: Callable[[], Any] | None = None,
) -> tuple[dict[str, Timeline], float | None]:
    """The median run of each (executor, plan), and eager's median time if ``eager`` is given.

    After one warm-up round, each round runs every entry once, in turn, and eager last: a
    slow spell of a shared machine then hits all of them alike, not one picture.
    """
    timelines: dict[str, list[Timeline]] = {label: [] for label in runs}
    eager_times: list[float] = []
    with torch.no_grad():
        for ex, plan in runs.values():
            ex.run(plan, *inputs)
        for _ in range(repeats):
            for label, (ex, plan) in runs.items():
                timelines[label].append(ex.run(plan, *inputs, profile=True)[1])
            if eager is not None:
                t0 = time.perf_counter()
                eager()
                eager_times.append(time.perf_counter() - t0)
    medians = {label: median_run(runs) for label, runs in timelines.items()}
    return medians, statistics.median(eager_times) if eager_times else None


# -- words for the page -----------------------------------------------------------------------
def describe_run(trace: Timeline, repeats: int) -> str:
    """One caption sentence of a timeline's numbers, as its Gantt title gives them."""
    lanes = ", ".join(lane_label(lane) for lane in trace.lanes)
    text = (
        f"the median of {repeats} runs: wall {format_seconds(trace.wall)} for "
        f"{format_seconds(trace.busy)} of tasks on {len(trace.lanes)} "
        f"lane{'s' * (len(trace.lanes) != 1)} ({lanes})"
    )
    why = trace.one_lane_reason()
    if why is not None:
        return f"{text}; the tasks ran one after another: {why}"
    span, _ = trace.measured_span()
    bound = trace.busy / span if span > 0 else 1.0
    return (
        f"{text}; {speed_words(trace.wall, trace.busy)} than running the tasks one after "
        f"another (these task times allow at most {bound:.2f}x faster)"
    )


def describe_plan(plan: gx.Plan) -> str:
    return f"{plan.headline()}; {plan.totals()}"


def caption(text: str) -> str:
    return f"*{text}*"


# -- the pictures ---------------------------------------------------------------------------
def catalog(repeats: int) -> dict[str, str]:
    """The README's picture: the demo's CatalogSearch on sequential and threads, each row's
    bar its timed rounds against eager PyTorch, the caption the demo's one line."""
    from graphexec.demo import DEFAULT_ROW, Catalog, CatalogSearch, helped_line

    torch.manual_seed(0)
    model, x = CatalogSearch().eval(), torch.randn(1, 32)
    with torch.no_grad():
        plan = gx.plan(gx.trace(model, name="CatalogSearch", leaves=(Catalog,)), (x,))
    executors = {"sequential": gx.SequentialExecutor(), DEFAULT_ROW: gx.ThreadExecutor()}
    rows, traces = {}, {}
    with torch.no_grad(), executors["sequential"], executors[DEFAULT_ROW]:
        for label, ex in executors.items():
            rows[label] = paired(lambda ex=ex: ex.run(plan, x), lambda: model(x), 3 * repeats)
            traces[label] = median_run([ex.run(plan, x, profile=True)[1] for _ in range(repeats)])
    viz.compare(traces, IMG / "catalog_compare.png", speedups=rows)
    threads = executors[DEFAULT_ROW]
    lanes = f"{threads.workers} pool threads of {threads.intra_op_threads} intra-op thread" + (
        "s" * (threads.intra_op_threads != 1) + " each"
    )
    line = helped_line("CatalogSearch", plan, rows[DEFAULT_ROW], lanes)
    return {
        "catalog_compare": caption(
            "The demo's `CatalogSearch` (one query searched in two catalogs of 200k items), "
            f"on sequential and on threads, each bar {3 * repeats} rounds paired with eager "
            f"PyTorch, each Gantt row the median of {repeats} profiled runs. {line}."
        )
    }


def two_towers(repeats: int) -> dict[str, str]:
    """The quick start's model: its plan, its run on threads, and three ways compared."""
    mod = example("two_towers")
    graph, inputs = mod.build_graph(), mod.example_inputs
    plan = gx.plan(graph, inputs)
    plan.draw(IMG / "two_towers_plan.png")
    with (
        gx.SequentialExecutor() as seq,
        gx.ThreadExecutor() as threads,
        gx.ThreadExecutor(schedule="levels") as levels,
    ):
        entries = {"sequential": (seq, plan), "threads": (threads, plan)}
        if plan.parallel:
            entries["threads (levels)"] = (levels, plan)
        else:  # show what the measured plan avoided: the plan from estimated costs overlaps
            entries[REJECTED] = (threads, gx.plan(graph))
        runs, _ = median_runs(entries, inputs, repeats)
    runs["threads"].gantt(IMG / "two_towers_gantt.png")
    viz.compare(runs, IMG / "two_towers_compare.png")
    base = runs["sequential"].wall
    walls = "; ".join(
        f"{label} {format_seconds(t.wall)}"
        + ("" if label == "sequential" else f" ({speed_words(t.wall, base)})")
        for label, t in runs.items()
    )
    if plan.parallel:
        plan_words = (
            'The measured plan overlaps the towers; "threads (levels)" waits for a whole '
            "level before the next."
        )
    else:
        plan_words = (
            "The measured plan runs the towers one after another, as its measurements chose "
            f'({plan.one_by_one_why}); the row "{REJECTED}" is not what graphexec runs: it is '
            "the plan made from estimated costs (`gx.plan(graph)`), which overlaps the towers, "
            "drawn to show what the measured plan avoided."
        )
    return {
        "two_towers_gantt": caption(
            "`examples/two_towers.py` on threads (dataflow), "
            f"{describe_run(runs['threads'], repeats)}."
        ),
        "two_towers_compare": caption(
            f"`examples/two_towers.py`, each row the median of {repeats} runs: {walls}. "
            + plan_words
        ),
    }


#: The label of a row that runs a plan the measured planner rejected.
REJECTED = "overlapped (rejected)"


def inception(repeats: int) -> dict[str, str]:
    """A traced CNN: its plan, its run on threads (with eager's time), the summary."""
    mod = example("inception_cnn")
    graph, inputs = gx.trace(mod.model, name="inception"), mod.example_inputs
    plan = gx.plan(graph, inputs)
    plan.draw(IMG / "inception_plan.png")
    with gx.ThreadExecutor() as threads:
        runs, eager = median_runs(
            {"threads": (threads, plan)}, inputs, repeats, eager=lambda: mod.model(*inputs)
        )
    trace = runs["threads"]
    assert eager is not None
    trace.gantt(IMG / "inception_gantt.png")
    return {
        "inception_plan": caption(f"`examples/inception_cnn.py`: {describe_plan(plan)}."),
        "inception_gantt": caption(
            f"Inception on threads (dataflow), {describe_run(trace, repeats)}. Eager PyTorch "
            f"took {format_seconds(eager)} (median, timed in turn with the runs): this run was "
            f"{speed_words(trace.wall, eager)}."
        ),
        "summary": "```\n" + trace.summary(eager=eager) + "\n```",
    }


def image_text() -> dict[str, str]:
    mod = example("image_text")
    plan = gx.plan(mod.build_graph(), mod.example_inputs)
    plan.draw(IMG / "image_text_plan.png")
    return {"image_text_plan": caption(f"`examples/image_text.py`: {describe_plan(plan)}.")}


def dask(repeats: int) -> dict[str, str]:
    """The ensemble of `examples/dask_dataset.py` on a local cluster of two workers."""
    mod = example("dask_dataset")
    plan = gx.plan(mod.build_graph())
    with gx.DaskExecutor(n_workers=2, dashboard_address=":0") as ex:
        runs, _ = median_runs({"dask": (ex, plan)}, mod.example_inputs, repeats)
    trace = runs["dask"]
    trace.gantt(IMG / "dask_gantt.png")
    return {
        "dask_gantt": caption(
            f"`examples/dask_dataset.py` on a local Dask cluster, {describe_run(trace, repeats)}."
        )
    }


class Branchy(nn.Module):
    """docs/entry_points.md's model: two branches, a graph break, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
        self.b = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) + self.b(x)
        if y.sum() > 0:
            y = -y
        return self.head(y)


def compiled() -> dict[str, str]:
    """The first graph Dynamo hands graphexec for Branchy (docs/entry_points.md)."""
    warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
    torch.manual_seed(0)
    backend = gx.compile_backend(executor="threads", repeats=3)
    torch._dynamo.reset()
    torch.compile(Branchy(), backend=backend)(torch.randn(32, 64))
    backend.graphs[0].plan.draw(IMG / "compiled_plan.png")
    backend.close()
    return {}


# -- the page ---------------------------------------------------------------------------------
def rewrite(pages: Sequence[Path], texts: Mapping[str, str]) -> None:
    """Replace what sits between each ``<!-- pictures:KEY -->`` pair with ``texts[KEY]``, on
    every page that has the pair; each key must be on at least one page, once."""
    docs = {page: page.read_text(encoding="utf-8") for page in pages}
    for key, text in texts.items():
        pattern = re.compile(
            rf"(<!-- pictures:{re.escape(key)} -->\n).*?(\n<!-- /pictures:{re.escape(key)} -->)",
            re.S,
        )
        found = 0
        for page, doc in docs.items():
            docs[page], n = pattern.subn(lambda m, t=text: m.group(1) + t + m.group(2), doc)
            if n > 1:
                raise SystemExit(f"{page}: {n} <!-- pictures:{key} --> blocks, expected one")
            found += n
        if not found:
            raise SystemExit(f"no page has a <!-- pictures:{key} --> block")
    for page, doc in docs.items():
        page.write_text(doc, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per timed picture")
    parser.add_argument("--only", help="comma-separated picture steps (default: all)")
    args = parser.parse_args(argv)
    IMG.mkdir(parents=True, exist_ok=True)
    texts = {
        "machine": (
            f"The pictures below were made by `make pictures` (`docs/make_pictures.py`) on "
            f"{os.cpu_count()} CPU cores with torch {torch.__version__.split('+')[0]}; each "
            f"timed one is the median of {args.repeats} runs, and the text beside it is written "
            "from the run drawn."
        )
    }
    steps = {
        "catalog": lambda: catalog(args.repeats),
        "two_towers": lambda: two_towers(args.repeats),
        "inception": lambda: inception(args.repeats),
        "image_text": image_text,
        "dask": lambda: dask(args.repeats),
        "compiled": compiled,
    }
    chosen = args.only.split(",") if args.only else list(steps)
    if unknown := [k for k in chosen if k not in steps]:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(steps)}")
    for key in chosen:
        texts.update(steps[key]())
    rewrite(PAGES, texts)
    print(f"pictures in {IMG.relative_to(ROOT)}; the text beside them rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
