"""One command for the whole benchmark: ``python -m benchmarks.run [--quick]``.

Runs the workload suite (every contender interleaved, medians), the dispatch-overhead,
planning-time and memory measurements, and writes ``benchmarks/results/RESULTS.md`` (or
``--out``) with the machine, versions, date, the exact command and the ratio tables.
``--quick`` (fewer repetitions, no torch.compile) finishes in a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import suite
from .workloads import WORKLOADS, build

#: Targets of issue 5, ratio to eager at 2 intra-op threads: (eager tasks, compiled tasks).
TARGETS = {
    "wide": (0.75, 0.38),
    "ensemble": (0.90, 0.38),
    "inception": (0.90, 0.30),
    "chain": (1.03, 0.26),
    "tiny": (0.15, 0.12),
}
OVERHEAD_TARGETS = {"inline task": 10e-6, "thread task": 30e-6}


def machine(prog: str = "benchmarks.run", versions: str = "") -> list[str]:
    """The results file's header: date, command (``python -m <prog> <argv>``), machine, load
    average and versions (``versions`` appended to the versions line)."""
    import onnxruntime

    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    command = " ".join(["python", "-m", prog, *sys.argv[1:]])
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), {platform.platform()}",
        f"- load average at start: {', '.join(f'{v:.2f}' for v in load)} (machine shared)",
        f"- python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.__config__.parallel_info().splitlines()[-1].strip()}), "
        f"onnxruntime {onnxruntime.__version__}{versions}",
    ]


def fmt_ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.3g}"


def _table(results: list[suite.Result]) -> list[str]:
    names: list[str] = []
    for r in results:
        for n in list(r.median) + list(r.error):
            if n not in names:
                names.append(n)
    lines = ["| contender | " + " | ".join(r.title for r in results) + " |"]
    lines.append("|---" * (len(results) + 1) + "|")
    for n in names:
        cells = []
        for r in results:
            if n in r.median:
                cells.append(f"{r.ratio(n):.2f} ({fmt_ms(r.median[n])} ms)")
            elif n in r.error:
                cells.append(f"error: {r.error[n]}")
            else:
                cells.append("–")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def _setup_table(results: list[suite.Result]) -> list[str]:
    lines = ["| contender | " + " | ".join(r.workload for r in results) + " |"]
    lines.append("|---" * (len(results) + 1) + "|")
    names = sorted({n for r in results for n, s in r.setup.items() if s > 0})
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r.setup.get(n, 0):.2f} s" for r in results) + " |")
    return lines


def _targets(results: list[suite.Result]) -> list[str]:
    lines = [
        "| workload | gx default | best gx (eager tasks) | target | met | "
        "gx compiled tasks | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        eager_t, comp_t = TARGETS.get(r.workload, (None, None))
        default = r.ratio("gx default")
        gx_eager = [
            r.ratio(n)
            for n in r.median
            if n.startswith("gx ") and "tasks" not in n and r.ratio(n) is not None
        ]
        best = min(gx_eager) if gx_eager else None
        comp = [r.ratio(n) for n in r.median if n.startswith("gx tasks")]
        best_c = min(comp) if comp else None

        def f(v: float | None) -> str:
            return "–" if v is None else f"{v:.2f}"

        def met(v: float | None, t: float | None) -> str:
            return "–" if v is None or t is None else ("met" if v <= t else "not met")

        if eager_t is None:  # an architecture of our own: no target, the ratios speak
            lines.append(f"| {r.title} | {f(default)} | {f(best)} | – | – | {f(best_c)} | – | – |")
            continue
        lines.append(
            f"| {r.title} | {f(default)} | {f(best)} | ≤ {eager_t} | {met(default, eager_t)} "
            f"(default) / {met(best, eager_t)} (best) | {f(best_c)} | ≤ {comp_t} | "
            f"{met(best_c, comp_t)} |"
        )
    return lines


def _planning(n: int, timeout: float) -> dict:
    code = (
        "import json,sys; from benchmarks.suite import planning_time as p; "
        "print(json.dumps(p(int(sys.argv[1]))))"
    )
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(n)],
            capture_output=True, text=True, timeout=timeout, cwd=root,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"nodes": n, "error": f"did not finish within {timeout:.0f} s"}
    if proc.returncode:
        return {"nodes": n, "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results file; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer reps, no torch.compile")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per contender")
    ap.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--plan-nodes", type=int, default=None, help="random DAG size to plan")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "RESULTS.md"))
    args = ap.parse_args(argv)
    reps = args.reps or (30 if args.quick else 50)
    compile_peers = not (args.quick or args.no_compile)
    plan_nodes = args.plan_nodes or 100_000
    t_start = time.time()
    header = machine()
    results = []
    for key in args.workloads:
        w = build(key)
        print(f"[bench] {w.title}: building contenders", flush=True)
        cs = suite.contenders_for(w, compile_peers=compile_peers)
        r = suite.time_workload(w, cs, reps=reps)
        results.append(r)
        best = sorted(((r.ratio(n), n) for n in r.median), key=lambda t: t[0])[:3]
        print(f"[bench]   best: {best}", flush=True)
    print("[bench] dispatch overhead", flush=True)
    overhead = suite.dispatch_overhead()
    print(f"[bench] planning a random {plan_nodes}-node DAG", flush=True)
    planning = _planning(plan_nodes, timeout=150)
    print("[bench] memory", flush=True)
    memory = {
        k: {c: suite.memory_peak(k, c) for c in suite.MEMORY_CONTENDERS} for k in args.workloads
    }
    lines = ["# graphexec benchmark results", "", *header]
    lines += [f"- repetitions: {reps} (median, interleaved, after 3 warm-up runs), all under "
              "`torch.inference_mode()`", ""]  # fmt: skip
    lines += ["## Targets of issue 5 (ratio to eager at 2 intra-op threads; lower is better)", ""]
    lines += _targets(results)
    lines += ["", "## All contenders: ratio to eager 2 thr (median ms)", ""]
    lines += _table(results)
    lines += ["", "## Setup times (export / script / compile, excluded from the runs)", ""]
    lines += _setup_table(results)
    lines += ["", "## Per-task dispatch overhead (no-op tasks)", "",
              "| what | µs per task | target |", "|---|---|---|"]  # fmt: skip
    for k, v in overhead.items():
        t = OVERHEAD_TARGETS.get(k)
        lines.append(
            f"| {k} | {v * 1e6:.1f} | "
            + (f"≤ {t * 1e6:.0f} µs: {'met' if v <= t else 'not met'}" if t else "peer")
            + " |"
        )
    lines += ["", "## Planning time", ""]
    if "error" in planning:
        lines.append(f"- random {planning['nodes']}-node DAG: {planning['error']} (target ≤ 1 s)")
    else:
        ok = "met" if planning["plan_s"] <= 1.0 else "not met"
        lines.append(
            f"- random {planning['nodes']}-node DAG: build {planning['build_s']:.2f} s, "
            f"plan {planning['plan_s']:.2f} s ({planning['tasks']} tasks, "
            f"{planning['levels']} levels); target ≤ 1 s: {ok}"
        )
    lines += ["", "## Peak memory of one run (RSS rise, MiB; fresh subprocess each)", "",
              "Measured as described in `benchmarks/suite.py`: `MALLOC_MMAP_THRESHOLD_=65536`, "
              "VmHWM reset through `/proc/self/clear_refs` after a warm-up run.", "",
              "| workload | " + " | ".join(suite.MEMORY_CONTENDERS) + " | worst / eager |",
              "|---" * (len(suite.MEMORY_CONTENDERS) + 2) + "|"]  # fmt: skip
    for k, row in memory.items():
        cells = [
            f"{v['peak_mib']:.1f}" if "peak_mib" in v else f"error: {v['error']}"
            for v in row.values()
        ]
        base = row["eager"].get("peak_mib")
        worst = max((v.get("peak_mib", 0) for v in row.values()), default=0)
        ratio = f"{worst / base:.2f}" if base else "–"
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", f"Total benchmark time: {time.time() - t_start:.0f} s.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
