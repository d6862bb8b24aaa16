"""Real models on many cores: ``python -m benchmarks.cpu_threads --threads 16``.

`benchmarks.bench_zoo` measures every column at 2 intra-op threads (the project's own
machines have 2 cores). This asks one question of a machine with more: with ``--threads``
intra-op threads, does the default ``gx.GraphModule`` beat eager, and what did its plan
decide (does overlapping branches pay once the cores outnumber what one op can use)?

For each model of `benchmarks.zoo` given (default: the torchvision and timm ones, which trace
without transformers' fx tracer), built as the suite builds it (random weights, batch 2,
64-80 px):

* ``eager``: the model at ``--threads`` intra-op threads (the reference);
* ``eager N thr``: the model at N threads (``--sweep``, default 1: how much one op gains from
  the cores), timed in a block of its own after the others (a call at another thread count
  disturbs the OpenMP pool of the call after it, so these are not interleaved);
* ``gx default``: ``gx.GraphModule(graph)`` after its first call, which plans, measuring at
  ``--threads`` (the planning seconds are reported, not timed);
* ``gx overlap, untried``: ``gx.plan(graph, example_inputs, check=False)`` on a
  ``gx.ThreadExecutor``: overlap as the per-node measurements estimate it, no trial.

Outputs are checked against eager first; then ``--reps`` rounds, each calling every contender
once in a rotated order (``perf_counter``, under ``torch.no_grad()``); medians. Models not
started within ``--budget`` seconds are skipped, and the results file is written after each
model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

import graphexec as gx

from . import zoo

#: The zoo models this runs by default: torchvision and timm (transformers 5 has no fx tracer).
DEFAULT = [k for k, s in zoo.SPECS.items() if s.library in ("torchvision", "timm")]


def _leaves(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _same(got: Any, want: Any) -> float:
    """Largest absolute difference between two outputs' tensors (raises if they differ)."""
    a, b = _leaves(got), _leaves(want)
    assert len(a) == len(b), f"{len(a)} output tensors, eager has {len(b)}"
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3)
    return max((float((x - y).abs().max()) for x, y in zip(a, b, strict=True)), default=0.0)


def _at_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return call


def _block(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``reps`` calls in a row, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(key: str, threads: int, reps: int, sweep: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Build, plan and time one model; what failed is recorded, not raised."""
    row: dict[str, Any] = {"model": key, "median_ms": {}, "errors": {}, "decisions": [],
                           "load": os.getloadavg()[0]}  # fmt: skip
    t0 = time.perf_counter()
    zm = zoo.build(key)
    row["shape"] = zm.shape
    if zm.graph is None:
        row["errors"]["trace"] = zm.trace_error[:200]
        return row
    x, gin = zm.inputs, zm.graph_inputs
    calls: dict[str, Callable[[], Any]] = {"eager": lambda: zm.model(*x)}
    with torch.no_grad():
        try:
            gm = gx.GraphModule(zm.graph)
            t = time.perf_counter()
            gm(*gin)
            row["planning_s"] = time.perf_counter() - t
            fused = [str(f) for f in gm.plan.fusion if f.choice != "not fused"]
            row["decisions"] = [*fused, *map(str, gm.plan.decisions)]
            row["one_by_one"] = gm.plan.one_by_one_why
            row["width"] = gm.plan.max_width
            calls["gx default"] = lambda: gm(*gin)
        except Exception as exc:
            row["errors"]["gx default"] = f"{type(exc).__name__}: {exc}"[:200]
        try:
            untried = gx.plan(zm.graph, gin, check=False)
            ex = gx.ThreadExecutor()
            row["untried"] = f"{untried.max_width} wide, {len(untried.tasks)} tasks" + (
                f"; one by one: {untried.one_by_one_why}" if untried.one_by_one_why else ""
            )
            calls["gx overlap, untried"] = lambda: ex.run(untried, *gin)
        except Exception as exc:
            row["errors"]["gx overlap, untried"] = f"{type(exc).__name__}: {exc}"[:200]
        want = zm.model(*x)
        ok = {}
        for name, fn in calls.items():
            try:
                row.setdefault("max_err", {})[name] = _same(fn(), want)
                fn()
                ok[name] = fn
            except Exception as exc:
                row["errors"][name] = f"{type(exc).__name__}: {exc}"[:200]
        samples: dict[str, list[float]] = {n: [] for n in ok}
        names = list(ok)
        for r in range(reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t = time.perf_counter()
                ok[name]()
                samples[name].append(time.perf_counter() - t)
        row["median_ms"] = {n: 1e3 * statistics.median(s) for n, s in samples.items()}
        for n in sweep:  # eager at other thread counts: each in a block of its own, afterwards
            row["median_ms"][f"eager {n} thr"] = 1e3 * _block(_at_threads(n, calls["eager"]), reps)
    row["wall_s"] = time.perf_counter() - t0
    return row


def render(rows: list[dict[str, Any]], threads: int, reps: int) -> str:
    sweeps = sorted({c for r in rows for c in r["median_ms"] if c.endswith(" thr")},
                    key=lambda c: int(c.split()[1]))  # fmt: skip
    cols = ["eager", "gx default", "gx overlap, untried", *sweeps]
    out = [
        f"# Real models at {threads} intra-op threads",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python -m benchmarks.cpu_threads {' '.join(sys.argv[1:])}`",
        f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} usable; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} (column load: 1-min average as "
        "each model started)",
        f"- python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.__config__.parallel_info().splitlines()[-1].strip()})",
        f"- {reps} interleaved rounds, medians, `torch.no_grad()`; ratio to eager at {threads} "
        "threads (lower is better)",
        "",
        "| model | " + " | ".join(cols) + " | planning s | load |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for r in rows:
        m = r["median_ms"]
        cells = []
        for c in cols:
            if c in m and "eager" in m:
                cells.append(f"{m[c] / m['eager']:.2f} ({m[c]:.3g} ms)")
            else:
                cells.append("–")
        out.append(f"| {r['model']} | " + " | ".join(cells)
                   + f" | {r.get('planning_s', 0):.1f} | {r.get('load', 0):.1f} |")  # fmt: skip
    out += ["", "## What the default plans decided", ""]
    for r in rows:
        said = [f"plan {r['width']} wide" if "width" in r else "no plan"]
        if r.get("one_by_one"):
            said.append(f"one by one: {r['one_by_one']}")
        said += list(r.get("decisions", []))
        if "untried" in r:
            said.append(f"untried overlap plan: {r['untried']}")
        said += [f"**{k} failed**: {v}" for k, v in r["errors"].items()]
        out.append(f"- **{r['model']}**: " + "; ".join(said))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_threads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--sweep", type=int, nargs="*", default=[1],
                    help="also time eager at these thread counts (default 1)")  # fmt: skip
    ap.add_argument("--models", nargs="*", default=DEFAULT, choices=list(zoo.SPECS))
    ap.add_argument("--budget", type=float, default=600.0, help="seconds to start models in")
    ap.add_argument("--out", type=Path, default=Path("cpu_threads.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", gx.DeadNodeWarning)  # traced getattr nodes nobody reads
    start, rows = time.perf_counter(), []
    for key in args.models:
        if time.perf_counter() - start > args.budget:
            print(f"[cpu] {key}: skipped, past the {args.budget:.0f} s budget", flush=True)
            continue
        print(f"[cpu] {key}", flush=True)
        try:
            row = bench_model(key, args.threads, args.reps, tuple(args.sweep))
        except Exception as exc:
            traceback.print_exc()
            row = {"model": key, "median_ms": {}, "errors": {"build": f"{exc}"[:200]}}
        torch.set_num_threads(args.threads)
        rows.append(row)
        m = row["median_ms"]
        ratios = {k: round(v / m["eager"], 2) for k, v in m.items()} if "eager" in m else {}
        print(f"[cpu]   {ratios} {row['errors'] or ''}", flush=True)
        args.out.write_text(render(rows, args.threads, args.reps), encoding="utf-8")
    print(f"[cpu] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
