"""A decision cached on a quiet machine, reused on a busy one (`bench_cache_busy`).

Run: ``python -m benchmarks.bench_cache_busy``. Issue 31, item 1. For each zoo model, in a
fresh decision-cache directory:

1. **Planned quiet.** A first process builds the model, traces it (``gx.trace``) and makes
   one call of a default ``gx.GraphModule``: it measures its decisions and stores them in the
   cache, as a user's first run does.
2. **Reused busy.** One background process keeps one core busy (a pure-Python loop, started
   and stopped by its PID: `benchmarks.bench_zoo._busy_core`). A second process builds the
   same model and two default modules that reuse the cached decision: ``now`` (this
   version: its first window of calls is compared with what the cache measured) and
   ``before`` (the same, with that comparison turned off by its watch's policy,
   ``cache_drift`` out of reach: what the previous version did). Each makes ``--calls``
   calls; then ``--rounds`` interleaved rounds time each module, eager at torch's default
   threads and eager at one thread (shuffled order per round, medians).

The row: each module's median over the better of the two eager medians (target: ``now`` at
most 1.15 on every model), and the decisions ``now`` ended with. Results go to
``benchmarks/results/cache_busy.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import graphexec as gx
from benchmarks import zoo
from benchmarks.bench_zoo import _busy_core

MODELS = ["googlenet", "clip", "resnet18", "mobilenet_v3_small", "squeezenet1_1", "bert",
          "distilbert"]  # fmt: skip
OUT = Path(__file__).parent / "results" / "cache_busy.md"


def _graph(zm: zoo.ZooModel) -> tuple[gx.Graph, tuple[Any, ...]]:
    graph = zm.graph if zm.graph is not None else gx.trace(zm.model, example_inputs=zm.inputs)
    return graph, (*zm.inputs, *(zm.extra if zm.graph is not None else ()))


def plan_quiet(key: str) -> dict[str, Any]:
    """Step 1, in its own process: one call of a default module, its decision cached."""
    zm = zoo.build(key)
    graph, inputs = _graph(zm)
    with torch.no_grad(), gx.GraphModule(graph) as gm:
        gm(*inputs)
        return {"decisions": [str(d) for d in gm.plan.decisions], "way": _way(gm.plan)}


def _way(p: gx.Plan) -> str:
    """How a plan runs, in a few words: the module or the plan, at which thread count."""
    what = "module as it is" if p.as_is is not None else "plan"
    return f"{what}, {'1 thread' if p.thread_budget == 1 else 'caller threads'}"


def _eager_at(model: torch.nn.Module, inputs: tuple[Any, ...], threads: int | None) -> Any:
    def run() -> Any:
        if threads is None:
            return model(*inputs)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return model(*inputs)
        finally:
            torch.set_num_threads(before)

    return run


def serve_busy(key: str, calls: int, rounds: int) -> dict[str, Any]:
    """Step 2, in its own process (under the busy loop the parent started)."""
    zm = zoo.build(key)
    graph, inputs = _graph(zm)
    off = gx.Watch(policy=gx.Policy(cache_drift=1e9))  # the previous version's watch
    with torch.no_grad(), gx.GraphModule(graph) as now, gx.GraphModule(graph, adapt=off) as before:
        for _ in range(calls):
            now(*inputs)
            before(*inputs)
        runs = {"now": lambda: now(*inputs), "before": lambda: before(*inputs),
                "eager": _eager_at(zm.model, zm.inputs, None),
                "eager 1 thread": _eager_at(zm.model, zm.inputs, 1)}  # fmt: skip
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            order = list(runs)
            random.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                runs[k]()
                seconds[k].append(time.perf_counter() - t0)
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        return {
            "medians": medians,
            "reused": now.plan.decision("cache") is not None,
            "way": _way(now.plan),
            "before_way": _way(before.plan),
            "decisions": [str(d) for d in now.plan.decisions],
            "before_decisions": [str(d) for d in before.plan.decisions],
        }


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cache_busy", *args],
                         env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(models: list[str], calls: int, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for key in models:
        with tempfile.TemporaryDirectory(prefix="gx-cache-busy-") as cache:
            env = {**os.environ, "GRAPHEXEC_CACHE_DIR": cache}
            env.pop("GRAPHEXEC_CACHE", None)
            quiet = _child(["--child", "plan", key], env)
            load = os.getloadavg()[0]
            with _busy_core() as busy:
                served = _child(["--child", "serve", key, "--calls", str(calls),
                                 "--rounds", str(rounds)], env)  # fmt: skip
            rows.append({"model": key, "quiet": quiet, "busy": served, "pid": busy.pid,
                         "load": load})  # fmt: skip
            m = served["medians"]
            best = min(m["eager"], m["eager 1 thread"])
            print(f"{key}: now {m['now'] / best:.2f}, before {m['before'] / best:.2f} of the "
                  f"better eager (reused: {served['reused']})", flush=True)  # fmt: skip
    return rows


def write(rows: list[dict[str, Any]], command: str, calls: int, rounds: int) -> None:
    lines = [
        "# A decision cached on a quiet machine, reused with one core busy",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"graphexec {gx.__version__}",
        "- load: step 1 (planning) ran with no load started on purpose (1-min load average "
        "before each model's step 2: "
        + ", ".join(f"{r['model']} {r['load']:.2f}" for r in rows)
        + "); step 2 ran beside one background process spinning a pure-Python loop, started "
        "before the process and killed by its PID after it (PIDs: "
        + ", ".join(str(r["pid"]) for r in rows)
        + ")",
        f"- each module made {calls} calls first; then {rounds} interleaved rounds (shuffled "
        "order), medians, under `torch.no_grad()`",
        "",
        "| model | now / better eager | before / better eager | eager 1 thread / eager | "
        "cached (planned quiet) | now, after its calls | before, after its calls |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        m = r["busy"]["medians"]
        best = min(m["eager"], m["eager 1 thread"])
        b = r["busy"]
        reused = "" if b["reused"] else " (not reused!)"
        lines.append(f"| {r['model']} | {m['now'] / best:.2f} | {m['before'] / best:.2f} | "
                     f"{m['eager 1 thread'] / m['eager']:.2f} | {r['quiet']['way']} | "
                     f"{b['way']}{reused} | {b['before_way']} |")  # fmt: skip
    lines += [
        "",
        "Target (issue 31): now / better eager at most 1.15 on every model. `before` "
        "is the same module with the comparison of its first calls turned off.",
        "",
        "## The decisions `now` ended with",
        "",
    ]
    for r in rows:
        lines += [f"- **{r['model']}**: " + "; ".join(d.replace("|", "/")
                                                     for d in r["busy"]["decisions"])]  # fmt: skip
    lines.append("")
    OUT.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cache_busy",
                                 description=__doc__.splitlines()[0])  # fmt: skip
    ap.add_argument("--models", nargs="*", default=MODELS, choices=list(zoo.SPECS))
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--child", nargs=2, metavar=("STEP", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        step, key = args.child
        result = plan_quiet(key) if step == "plan" else serve_busy(key, args.calls, args.rounds)
        print(json.dumps(result))
        return 0
    rows = run(args.models, args.calls, args.rounds)
    write(rows, " ".join(["python -m benchmarks.bench_cache_busy", *(argv or sys.argv[1:])]),
          args.calls, args.rounds)  # fmt: skip
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
