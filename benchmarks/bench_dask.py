"""DaskExecutor benchmark: latency, map() scaling, pipelining, placement, overhead (one run).

Run ``python benchmarks/bench_dask.py`` (a few minutes on 2 cores); it prints a report and
writes ``benchmarks/results/dask.md``. Everything is measured in this one run, medians:

1. Per-call latency on four heavy branches: threads versus `DaskExecutor` (embedded cluster,
   one 1-thread worker process per core); bytes the client sends per call after the first.
2. Calls separated by idle time (the active memory manager runs between them): how many
   workers each call's branches ran on (the AMM regression: it was 1 after the first call).
3. ``map()`` over 64 inputs of a two-tower MLP (>= 10 ms per input per worker) on 1 and 2
   workers (``torch_threads=1``, so the workers, not intra-op threads, scale), an eager loop,
   and hand-written Dask (``client.scatter(model, broadcast=True)`` then ``client.map``).
4. A two-stage chain with ``placement="shard"``: ``map()`` over 64 inputs on 2 workers (one
   stage each, pipelined) against the same plan on 1 worker.
5. Weight bytes per worker with ``placement="shard"`` on 2 and on 4 workers (in-process
   workers: the figures are the scheduler's byte counts, not timings).
6. Per-call overhead of a 5-task chain of tiny nodes against a bare ``client.submit`` chain
   of the same five functions on the same cluster.
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
            out["workers"] = len(ex.client.nthreads())
            out["workers used after idle gaps"] = _after_idle_gaps(ex, plan, x)
    return out


def _after_idle_gaps(ex: DaskExecutor, plan: gx.Plan, x: torch.Tensor, calls: int = 3) -> float:
    """Fewest workers the branches of a call ran on, calls separated by > 1 AMM interval."""
    gap = 1.5 * dask.utils.parse_timedelta(
        dask.config.get("distributed.scheduler.active-memory-manager.interval")
    )
    used = []
    for _ in range(calls):
        time.sleep(gap)  # idle: the active memory manager runs, no task reads the weights
        _, trace = ex.run(plan, x, profile=True)
        used.append(len({e.lane for e in trace.events if e.task.startswith("tower")}))
    return min(used)


def bench_map(n_inputs: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = TwoTowerMLP()
    plan = gx.plan(mlp_graph(model))
    inputs = [torch.randn(256, 1024) for _ in range(n_inputs)]
    out: dict[str, float] = {}
    with torch.no_grad():
        out["eager loop"] = median_time(lambda: [model(x) for x in inputs], repeats)
    for workers in (1, 2):
        ex = DaskExecutor(n_workers=workers, dashboard_address=None, torch_threads=1)
        with ex, torch.no_grad():
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


def two_stage_graph(d: int = 1024, hidden: int = 4096) -> gx.Graph:
    g = gx.Graph("two_stage")
    stages = [nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)) for _ in "ab"]
    s0 = g.node("stage0", stages[0], g.input("x"))
    g.output(g.node("stage1", stages[1], s0))
    return g


def bench_pipeline(n_inputs: int, repeats: int) -> dict[str, float]:
    """A sharded two-stage chain: map() on 1 worker against 2 workers (one stage each)."""
    torch.manual_seed(0)
    plan = gx.plan(two_stage_graph(), inline_below=0.0, fuse_chains=False)
    inputs = [torch.randn(64, 1024) for _ in range(n_inputs)]
    out: dict[str, float] = {}
    for workers in (1, 2):
        ex = DaskExecutor(
            n_workers=workers, dashboard_address=None, placement="shard", torch_threads=1
        )
        with ex, torch.no_grad():
            out[f"sharded chain map, {workers} worker(s)"] = median_time(
                lambda ex=ex: list(ex.map(plan, inputs, progress=False)), repeats
            )
    return out


def bench_shard_bytes() -> dict[str, float]:
    """Largest worker's share of the weights with placement="shard" (scheduler byte counts)."""
    g = gx.Graph("eight_towers")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *[g.node(f"t{i}", nn.Linear(512, 512), x) for i in range(8)]))
    plan = gx.plan(g, inline_below=0.0)
    out = {}
    for n in (2, 4):
        with (
            DaskExecutor(
                n_workers=n, processes=False, dashboard_address=None, placement="shard"
            ) as ex,
            torch.no_grad(),
        ):
            ex.run(plan, torch.randn(2, 512))
            sizes = ex.client.nbytes(summary=False)
            per_worker = [
                sum(sizes.get(k, 0) for k in keys if str(k).startswith("weights-"))
                for keys in ex.client.has_what().values()
            ]
            out[f"{n} workers"] = max(per_worker) / ex.scattered_nbytes
    return out


def _tiny(t: torch.Tensor) -> torch.Tensor:
    return t + 1


def bench_overhead(repeats: int) -> dict[str, float]:
    """A 5-task chain of tiny nodes: DaskExecutor.run against a bare client.submit chain."""
    g = gx.Graph("five_tasks")
    h = g.input("x")
    for i in range(5):
        h = g.node(f"n{i}", _tiny, h)
    g.output(h)
    plan = gx.plan(g, inline_below=0.0, fuse_chains=False)
    x = torch.zeros(4)
    with DaskExecutor(dashboard_address=None) as ex:
        assert len(plan.tasks) == 5
        out = {"DaskExecutor.run": median_time(lambda: ex.run(plan, x), repeats)}
        out["bare client.submit chain"] = median_time(lambda: _bare_chain(ex.client, x), repeats)
    return out


def _bare_chain(client: distributed.Client, x: torch.Tensor) -> torch.Tensor:
    fut = client.submit(_tiny, x, pure=False)
    for _ in range(4):
        fut = client.submit(_tiny, fut, pure=False)
    return fut.result()


def versions() -> str:
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}"
    )


def report(r: dict[str, dict[str, float]], n_inputs: int, command: str) -> str:
    lat = r["latency"]
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
        f"Calls separated by idle gaps of 1.5 AMM intervals: the branches of every call ran on "
        f"at least {lat['workers used after idle gaps']:.0f} of {lat['workers']:.0f} workers "
        "(the AMM regression: 1 after the first call).",
        "",
        "## Bytes the client sends per call (after the first)",
        "",
        f"- task stream: {lat['bytes per call']:.0f} B per call, inputs {lat['input bytes']:.0f} B"
        f" (overhead {lat['bytes per call'] - lat['input bytes']:.0f} B, target <= 64 KiB)",
        f"- weights scattered once: {lat['weights scattered'] / 2**20:.1f} MiB",
        "",
    ]
    return "\n".join(rows + _report_scaling(r, n_inputs))


def _report_scaling(r: dict[str, dict[str, float]], n_inputs: int) -> list[str]:
    thr, pipe, over = r["map"], r["pipeline"], r["overhead"]
    ms = 1e3
    rows = [
        f"## map() throughput: {n_inputs} inputs, two-tower MLP (1024->2048->1024 x2, head), "
        "batch 256, torch_threads=1",
        "",
        "| what | s | inputs/s | vs eager | vs hand-written Dask |",
        "|---|---:|---:|---:|---:|",
    ]
    hand = thr["hand-written Dask, 2 workers"]
    for k, v in thr.items():
        vs_eager, vs_hand = thr["eager loop"] / v, hand / v
        rows.append(f"| {k} | {v:.2f} | {n_inputs / v:.1f} | {vs_eager:.2f}x | {vs_hand:.2f}x |")
    one, two = thr["DaskExecutor.map, 1 worker(s)"], thr["DaskExecutor.map, 2 worker(s)"]
    p1, p2 = pipe["sharded chain map, 1 worker(s)"], pipe["sharded chain map, 2 worker(s)"]
    rows += [
        "",
        f"Scaling 1 -> 2 workers: {one / two:.2f}x (target >= 1.8x); against hand-written "
        f"Dask: {hand / two:.2f}x (target >= 1.0x)",
        "",
        f"## Pipelining: sharded two-stage chain (1024->4096->1024 per stage, batch 64), "
        f"map() over {n_inputs} inputs",
        "",
        f"- 1 worker: {p1:.2f} s; 2 workers (one stage each): {p2:.2f} s; "
        f"throughput ratio {p1 / p2:.2f}x (target >= 1.7x)",
        "",
        '## Weight bytes per worker, placement="shard" (8 towers Linear 512x512)',
        "",
    ]
    for k, v in r["shard bytes"].items():
        n = int(k.split()[0])
        rows.append(f"- {k}: largest worker holds {v:.2f} of the weights (target <= "
                    f"{0.6 if n == 2 else 1 / n + 0.1:.2f})")  # fmt: skip
    rows += [
        "",
        "## Per-call overhead: 5-task chain of tiny nodes, 2 workers",
        "",
        f"- DaskExecutor.run: {over['DaskExecutor.run'] * ms:.1f} ms; bare client.submit "
        f"chain: {over['bare client.submit chain'] * ms:.1f} ms; graphexec adds "
        f"{(over['DaskExecutor.run'] - over['bare client.submit chain']) * ms:.1f} ms",
        "",
    ]
    return rows


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the report and write it to ``benchmarks/results/dask.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    few = max(1, args.repeats // 2)
    results = {
        "latency": bench_latency(args.repeats),
        "map": bench_map(args.inputs, few),
        "pipeline": bench_pipeline(args.inputs, few),
        "shard bytes": bench_shard_bytes(),
        "overhead": bench_overhead(10 * args.repeats),
    }
    command = "python benchmarks/bench_dask.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(results, args.inputs, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
