"""DaskExecutor benchmark: per-call latency, map() throughput, bytes per call (one run, medians).

Run ``python benchmarks/bench_dask.py`` (about 2 minutes on 2 cores); it prints a table and
writes ``benchmarks/results/dask.md``. Everything is measured in this one run:

1. Per-call latency on a graph of four heavy branches (each >= 50 ms on one thread): the
   thread executor versus `DaskExecutor` on an embedded LocalCluster (one 1-thread worker
   process per core).
2. ``map()`` throughput over 64 inputs of an MLP DAG at batch 256: `DaskExecutor.map` on 1 and
   on 2 worker processes, a plain eager loop in this process (all cores as intra-op threads),
   and hand-written Dask (``client.scatter(model, broadcast=True)`` then ``client.map``).
3. Bytes the client sends per call after the first (its task-stream counter), against the
   size of the call's inputs.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import dask
import distributed
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.executors.dask import DaskExecutor

RESULTS = Path(__file__).parent / "results" / "dask.md"


class Branches(nn.Module):
    """Four heavy branches summed: the latency graph, eager."""

    def __init__(self, d: int = 1024, hidden: int = 4096):
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)) for _ in range(4)
        )

    def forward(self, x):
        return sum(t(x) for t in self.towers)


class TwoTowerMLP(nn.Module):
    """x -> (tower_a, tower_b) -> add -> head: the map() model, eager."""

    def __init__(self, d: int = 1024, hidden: int = 2048):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.b = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


def branches_graph(m: Branches) -> gx.Graph:
    g = gx.Graph("four_branches")
    x = g.input("x")
    outs = [g.node(f"tower{i}", t, x) for i, t in enumerate(m.towers)]
    g.output(g.node("sum", gx.add(), *outs))
    return g


def mlp_graph(m: TwoTowerMLP) -> gx.Graph:
    g = gx.Graph("two_tower_mlp")
    x = g.input("x")
    s = g.node("add", gx.add(), g.node("tower_a", m.a, x), g.node("tower_b", m.b, x))
    g.output(g.node("head", m.head, s))
    return g


def _apply(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and, for Dask, the one-time weight transfer)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_latency(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = Branches()
    plan = gx.plan(branches_graph(model))
    x = torch.randn(512, 1024)
    one_thread = torch.get_num_threads()
    torch.set_num_threads(1)
    branch = median_time(lambda: _apply(model.towers[0], x), repeats)
    torch.set_num_threads(one_thread)
    out: dict[str, float] = {"branch (1 thread)": branch}
    with torch.no_grad():
        out["eager"] = median_time(lambda: model(x), repeats)
        with gx.ThreadExecutor() as ex:
            out["threads"] = median_time(lambda: ex.run(plan, x), repeats)
        with DaskExecutor(dashboard_address=None) as ex:
            out["dask"] = median_time(lambda: ex.run(plan, x), repeats)
            sent = ex.sent_bytes
            ex.run(plan, x)
            out["bytes per call"] = ex.sent_bytes - sent
            out["input bytes"] = x.nbytes
            out["weights scattered"] = ex.scattered_nbytes
    return out


def bench_map(n_inputs: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = TwoTowerMLP()
    plan = gx.plan(mlp_graph(model))
    inputs = [torch.randn(256, 1024) for _ in range(n_inputs)]
    out: dict[str, float] = {}
    with torch.no_grad():
        out["eager loop"] = median_time(lambda: [model(x) for x in inputs], repeats)
    for workers in (1, 2):
        with DaskExecutor(n_workers=workers, dashboard_address=None) as ex, torch.no_grad():
            out[f"DaskExecutor.map, {workers} worker(s)"] = median_time(
                lambda ex=ex: list(ex.map(plan, inputs, progress=False)), repeats
            )
            if workers == 2:
                out["hand-written Dask, 2 workers"] = median_time(
                    functools.partial(_hand_written, ex.client, model, inputs), repeats
                )
    return out


def _hand_written(client: distributed.Client, model: nn.Module, inputs: list) -> list:
    """The best plain Dask code: the model scattered to every worker once, then client.map."""
    global _REMOTE
    if _REMOTE is None or _REMOTE.client is not client:
        _REMOTE = client.scatter(model, broadcast=True)
    with warnings.catch_warnings():  # client.map embeds the 32 MiB of inputs: Dask warns
        warnings.simplefilter("ignore", UserWarning)
        futures = client.map(_apply, [_REMOTE] * len(inputs), inputs)
    return client.gather(futures)


_REMOTE = None


def versions() -> str:
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}"
    )


def report(lat: dict[str, float], thr: dict[str, float], n_inputs: int, command: str) -> str:
    ms = 1e3
    rows = [
        "# DaskExecutor benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: {versions()}",
        f"- command: `{command}`",
        "- timings are medians; Dask clusters are embedded LocalClusters of 1-thread workers",
        "",
        "## Per-call latency: four branches (Linear 1024->4096->1024, batch 512) summed",
        "",
        "| what | ms | vs threads |",
        "|---|---:|---:|",
    ]
    for k in ("branch (1 thread)", "eager", "threads", "dask"):
        rows.append(f"| {k} | {lat[k] * ms:.1f} | {lat[k] / lat['threads']:.2f}x |")
    rows += [
        "",
        "## Bytes the client sends per call (after the first)",
        "",
        f"- task stream: {lat['bytes per call']:.0f} B per call, inputs {lat['input bytes']:.0f} B"
        f" (overhead {lat['bytes per call'] - lat['input bytes']:.0f} B, target <= 64 KiB)",
        f"- weights scattered once: {lat['weights scattered'] / 2**20:.1f} MiB",
        "",
        f"## map() throughput: {n_inputs} inputs, two-tower MLP (1024->2048->1024 x2, head), "
        "batch 256",
        "",
        "| what | s | inputs/s | vs eager | vs hand-written Dask |",
        "|---|---:|---:|---:|---:|",
    ]
    hand = thr["hand-written Dask, 2 workers"]
    for k, v in thr.items():
        vs_eager, vs_hand = thr["eager loop"] / v, hand / v
        rows.append(f"| {k} | {v:.2f} | {n_inputs / v:.1f} | {vs_eager:.2f}x | {vs_hand:.2f}x |")
    one, two = thr["DaskExecutor.map, 1 worker(s)"], thr["DaskExecutor.map, 2 worker(s)"]
    rows += ["", f"Scaling 1 -> 2 workers: {one / two:.2f}x", ""]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the report and write it to ``benchmarks/results/dask.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lat = bench_latency(args.repeats)
    thr = bench_map(args.inputs, max(1, args.repeats // 2))
    command = "python benchmarks/bench_dask.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(lat, thr, args.inputs, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
