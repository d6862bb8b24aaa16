"""Scale benchmark (issue 31, item 5): a random 100k-node DAG, built and planned from estimates.

Run ``python -m benchmarks.bench_scale`` (about 2 minutes on 2 cores; ``--before PATH`` about
twice that); it prints a report and writes ``benchmarks/results/scale.md``.

The graph is what a user declares with ``gx.Graph`` / ``g.input`` / ``g.node`` / ``g.output``:
``--nodes`` nodes in layers of ``--width``, every node live (node ``j`` of a layer reads node
``j`` of the layer before, so every node has a reader; the last layer is the output). Half the
nodes are one-input callables drawn from a pool shared across nodes (six ``nn.Linear(16, 16)``,
``nn.ReLU``, ``nn.GELU``, ``nn.LayerNorm``, ``torch.tanh``), half two-input merges (``gx.add()``,
``torch.add``, ``torch.maximum``) of that node and a random one of the layer before.

Every round runs in a fresh process (``python benchmarks/bench_scale.py --child``): build the
graph, ``gx.plan(g)`` (no example inputs: costs from estimates), and plan it again. Wall and
CPU seconds are medians over ``--rounds``. Peak memory is measured in one more process per
size with ``tracemalloc`` (the Python heap of build + plan, per node, at a quarter of the nodes
and at all of them: equal bytes per node is O(nodes + edges)) and the process's peak RSS.
``--before PATH`` runs the same rounds against another checkout of graphexec (``git worktree
add /tmp/scale-before <commit>``), interleaved round by round with this one, so both see the
same load. The sequential executor is also run on the plan (first call: writes and compiles
its straight-line program; second call: runs it) at both sizes, to show the run is linear too.
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale.md"


def scale_graph(n: int = 100_000, width: int = 50, seed: int = 0) -> Any:
    """The benchmark's graph: ``n`` live nodes in layers of ``width`` (module docstring)."""
    import torch
    import torch.nn as nn

    import graphexec as gx

    rng = random.Random(seed)
    torch.manual_seed(seed)
    linears = [nn.Linear(16, 16) for _ in range(6)]
    unary = [*linears, nn.ReLU(), nn.GELU(), nn.LayerNorm(16), torch.tanh]
    binary = [gx.add(), torch.add, torch.maximum]
    g = gx.Graph(f"scale{n}")
    x = g.input("x")
    prev = [x] * width
    for k in range(n // width):
        layer = []
        for j in range(width):
            if rng.random() < 0.5:
                layer.append(g.node(f"n{k}_{j}", rng.choice(unary), prev[j]))
            else:
                other = prev[rng.randrange(width)]
                layer.append(g.node(f"n{k}_{j}", rng.choice(binary), prev[j], other))
        prev = layer
    g.output(*prev)
    return g


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One round in this process: build, plan, plan again (and the memory or the run)."""
    import torch

    import graphexec as gx

    if args.memory:
        import tracemalloc

        tracemalloc.start()
        g = scale_graph(args.nodes, args.width, args.seed)
        p = gx.plan(g)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        import resource

        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_bytes": peak, "rss_kib": rss_kib, "tasks": len(p.tasks)}
    g, build_wall, build_cpu = _timed(lambda: scale_graph(args.nodes, args.width, args.seed))
    p, plan_wall, plan_cpu = _timed(lambda: gx.plan(g))
    _, replan_wall, replan_cpu = _timed(lambda: gx.plan(g))
    row = {"build_wall": build_wall, "build_cpu": build_cpu, "plan_wall": plan_wall,
           "plan_cpu": plan_cpu, "replan_wall": replan_wall, "replan_cpu": replan_cpu,
           "tasks": len(p.tasks), "levels": len(p.levels), "graphexec": gx.__version__,
           "from": str(Path(gx.__file__).parent)}  # fmt: skip
    if args.run:
        torch.set_num_threads(1)
        ex, x = gx.SequentialExecutor(), torch.randn(1, 16)
        with torch.inference_mode():
            _, first, _ = _timed(lambda: ex.run(p, x))
            _, again, _ = _timed(lambda: ex.run(p, x))
        row.update(run_first=first, run_again=again)
    return row


def _spawn(tree: Path, nodes: int, args: argparse.Namespace, *flags: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--nodes", str(nodes),
           "--width", str(args.width), "--seed", str(args.seed), *flags]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip() or "?"


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"after": ROOT} | ({"before": Path(args.before)} if args.before else {})
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for label, tree in trees.items():  # interleaved: both trees see the same load
            row = _spawn(tree, args.nodes, args)
            rounds[label].append(row)
            print(f"[scale] round {i + 1} {label}: build {row['build_wall']:.2f} s, "
                  f"plan {row['plan_wall']:.2f} s (cpu {row['build_cpu']:.2f} / "
                  f"{row['plan_cpu']:.2f})", flush=True)  # fmt: skip
    small = max(args.width, args.nodes // 4 // args.width * args.width)
    memory = {label: {n: _spawn(tree, n, args, "--memory") for n in (small, args.nodes)}
              for label, tree in trees.items()}  # fmt: skip
    runs = {n: _spawn(ROOT, n, args, "--run") for n in (small, args.nodes)}
    return {"rounds": rounds, "memory": memory, "runs": runs, "small": small,
            "commits": {k: _commit(t) for k, t in trees.items()}}  # fmt: skip


def _report(args: argparse.Namespace, m: dict[str, Any], load: tuple[float, float]) -> str:
    import torch

    rounds, labels = m["rounds"], list(m["rounds"])
    n, small = args.nodes, m["small"]
    lines = [
        "# Scale: a random 100k-node DAG, built and planned from estimates (issue 31, item 5)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"graphexec {rounds['after'][0]['graphexec']} "
        + ", ".join(f"({k}: commit {c})" for k, c in m["commits"].items()),
        f"- command: `python -m benchmarks.bench_scale {' '.join(sys.argv[1:])}`".rstrip(),
        f"- load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end "
        f"({os.cpu_count()} cores; the machine is shared with other work, so CPU seconds are "
        "given beside wall seconds)",
        f"- graph: {n} nodes in layers of {args.width}, every node live, seed {args.seed} "
        f"({rounds['after'][0]['tasks']} tasks, {rounds['after'][0]['levels']} levels after "
        "chain fusion and folding); each round a fresh process; medians of "
        f"{args.rounds} rounds"
        + (", before and after interleaved round by round" if "before" in rounds else ""),
        "",
        "| measure | target | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for key, what, target in (("build", "build (g.input / g.node / g.output)", "≤ 1 s"),
                              ("plan", "gx.plan(g), from estimates", "≤ 1 s"),
                              ("replan", "gx.plan(g) again (graph's order kept)", "")):  # fmt: skip
        cells = [f"{_median(rounds[k], key + '_wall'):.2f} s "
                 f"(cpu {_median(rounds[k], key + '_cpu'):.2f})" for k in labels]  # fmt: skip
        lines.append(f"| {what} | {target} | " + " | ".join(cells) + " |")
    for size in (small, n):
        mem = [m["memory"][k][str(size)] for k in labels]
        cells = [f"{r['peak_bytes'] / size:.0f} B/node (peak {r['peak_bytes'] / 2**20:.0f} MiB, "
                 f"RSS {r['rss_kib'] / 1024:.0f} MiB)" for r in mem]  # fmt: skip
        lines.append(f"| peak heap of build + plan, {size} nodes (tracemalloc) | O(n) | "
                     + " | ".join(cells) + " |")  # fmt: skip
    if "before" in rounds:
        ratio = [_median(rounds["before"], k + "_wall") / _median(rounds["after"], k + "_wall")
                 for k in ("build", "plan")]  # fmt: skip
        lines += ["", f"After / before: build {ratio[0]:.1f}x faster, plan {ratio[1]:.1f}x "
                  "faster (wall medians, same rounds)."]  # fmt: skip
    lines += ["", "Sequential executor on the plan (the executor is unchanged; a check that "
              "running is linear too; 1 intra-op thread, input [1, 16]):", "",
              "| nodes | first call (writes and compiles the program) | second call |",
              "|---:|---:|---:|"]  # fmt: skip
    for size in (small, n):
        r = m["runs"][str(size)]
        lines.append(f"| {size} | {r['run_first']:.2f} s ({r['run_first'] / size * 1e6:.0f} "
                     f"µs/node) | {r['run_again']:.2f} s ({r['run_again'] / size * 1e6:.0f} "
                     "µs/node) |")  # fmt: skip
    lines += ["", "Per round (wall s: build, plan, replan):", ""]
    for k in labels:
        cells = "; ".join(f"{r['build_wall']:.2f}, {r['plan_wall']:.2f}, {r['replan_wall']:.2f}"
                          for r in rounds[k])  # fmt: skip
        lines.append(f"- {k}: {cells}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", help="another graphexec checkout, measured side by side")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return
    start = os.getloadavg()[0]
    m = _measure(args)
    m["memory"] = {k: {str(s): v for s, v in d.items()} for k, d in m["memory"].items()}
    m["runs"] = {str(s): v for s, v in m["runs"].items()}
    text = _report(args, m, (start, os.getloadavg()[0]))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
