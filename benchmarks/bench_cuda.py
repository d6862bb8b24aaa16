"""CudaStreamExecutor benchmark: eager vs one stream vs many streams, with and without CUDA graphs.

Run ``python benchmarks/bench_cuda.py`` on a machine with a CUDA GPU; it prints a table and
writes ``benchmarks/results/cuda.md``. On a machine without CUDA it says so, measures nothing
and exits 0 (``--check`` still builds the workloads on the CPU and checks each graph against its
eager model). Everything is measured in one run:

Workloads (``gx.Graph`` and eager ``nn.Module`` over the same layer objects, eval mode):

* ``googlenet``: a GoogLeNet-like network (conv-BN-ReLU stem, inception blocks 3a-5b, each
  with four branches and a concat, pooling, linear head) at batch 1, 224x224.
* ``towers``: 8 MLP towers (512 -> 1024 -> 1024 -> 512) summed, then a head, at batch 8.
* ``chain``: 32 x (Linear 1024 -> 1024, ReLU) at batch 8: no parallelism to find.

Contenders:

* ``eager``: the module called directly (one stream).
* ``sequential``: `gx.SequentialExecutor`, every task on the caller's stream.
* ``streams``: `gx.CudaStreamExecutor(streams=N)`, dataflow schedule.
* ``graph, 1 stream``: a sequential CUDA graph (``streams=1, capture=True``).
* ``graph, N streams``: the multi-stream program captured into one CUDA graph.

Method: all under ``torch.inference_mode()``; outputs checked against eager first; a few warm-up
calls each; then ``--reps`` rounds, each calling every contender once in a rotated order, each
call timed on the host between two ``torch.cuda.synchronize()`` (so the time is the GPU work
plus the launch overhead the GPU waits for). Ratios are of medians from the same run. Peak
memory: ``torch.cuda.max_memory_allocated()`` over one call after a reset, as a ratio to
eager's; the second ratio counts only what the call adds above the memory allocated before it
(weights, inputs and, for CUDA graphs, their private pools, which stay allocated).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import graphexec as gx
from graphexec.executors.cuda import INLINE_BELOW

RESULTS = Path(__file__).parent / "results" / "cuda.md"


# -- workloads ---------------------------------------------------------------------------------
def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Inception(nn.Module):
    """GoogLeNet's block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 (as torchvision) | pool -> 1x1; cat."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [
                conv(cin, c1, 1),
                nn.Sequential(conv(cin, c3r, 1), conv(c3r, c3, 3)),
                nn.Sequential(conv(cin, c5r, 1), conv(c5r, c5, 3)),
                nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(cin, cp, 1)),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


_BLOCKS = [  # GoogLeNet's widths; "pool" is a 3x3/2 max-pool between stages
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "pool",
    (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128), "pool",
    (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
]  # fmt: skip


class GoogLeNetLike(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), conv(64, 64, 1),
            conv(64, 192, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
        )  # fmt: skip
        self.body = nn.ModuleList(
            nn.MaxPool2d(3, 2, ceil_mode=True) if b == "pool" else Inception(*b) for b in _BLOCKS
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        return self.head(x)


def googlenet_graph(m: GoogLeNetLike) -> gx.Graph:
    """One node per branch, a cat per block: four concurrent branches per block."""
    g = gx.Graph("googlenet")
    h = g.node("stem", m.stem, g.input("x"))
    for i, block in enumerate(m.body):
        if isinstance(block, Inception):
            outs = [g.node(f"inc{i}.b{j}", b, h) for j, b in enumerate(block.branches)]
            h = g.node(f"inc{i}.cat", gx.cat(dim=1), *outs)
        else:
            h = g.node(f"pool{i}", block, h)
    g.output(g.node("head", m.head, h))
    return g


class Towers(nn.Module):
    def __init__(self, n: int = 8, d: int = 512, hidden: int = 1024):
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, d))
            for _ in range(n)
        )  # fmt: skip
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(sum(t(x) for t in self.towers))


def towers_graph(m: Towers) -> gx.Graph:
    g = gx.Graph("towers")
    x = g.input("x")
    s = g.node("sum", gx.add(), *(g.node(f"t{i}", t, x) for i, t in enumerate(m.towers)))
    g.output(g.node("head", m.head, s))
    return g


def chain_model(n: int = 32, d: int = 1024) -> nn.Sequential:
    return nn.Sequential(*(m for _ in range(n) for m in (nn.Linear(d, d), nn.ReLU())))


def chain_graph(m: nn.Sequential) -> gx.Graph:
    g = gx.Graph("chain")
    h = g.input("x")
    for i, layer in enumerate(m):
        h = g.node(f"l{i}", layer, h)
    g.output(h)
    return g


@dataclass
class Workload:
    name: str
    what: str
    model: nn.Module
    graph: gx.Graph
    x: torch.Tensor


def workloads(device: str) -> list[Workload]:
    torch.manual_seed(0)
    out = []
    for name, what, make, build, shape in [
        ("googlenet", "GoogLeNet-like, batch 1, 3x224x224", GoogLeNetLike, googlenet_graph,
         (1, 3, 224, 224)),
        ("towers", "8 MLP towers 512-1024-1024-512 summed, batch 8", Towers, towers_graph,
         (8, 512)),
        ("chain", "32 x (Linear 1024, ReLU), batch 8", chain_model, chain_graph, (8, 1024)),
    ]:  # fmt: skip
        model = make().to(device).eval()
        out.append(Workload(name, what, model, build(model), torch.randn(shape, device=device)))
    return out


# -- measuring ---------------------------------------------------------------------------------
def contenders(w: Workload, streams: int) -> dict[str, tuple[Callable[[], object], object]]:
    """label -> (call, executor or None); every executor runs the same plan."""
    plan = gx.plan(w.graph, inline_below=INLINE_BELOW)
    made = {
        "sequential": gx.SequentialExecutor(),
        f"streams ({streams})": gx.CudaStreamExecutor(streams=streams),
        "graph, 1 stream": gx.CudaStreamExecutor(streams=1, capture=True),
        f"graph, {streams} streams": gx.CudaStreamExecutor(streams=streams, capture=True),
    }
    calls = {"eager": (lambda: w.model(w.x), None)}
    for label, ex in made.items():
        calls[label] = (lambda ex=ex: ex.run(plan, w.x), ex)
    return calls


def timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak bytes allocated during one call, bytes allocated before it)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated(), before


def bench(w: Workload, streams: int, reps: int, warmup: int = 5) -> dict[str, dict[str, float]]:
    calls = contenders(w, streams)
    with torch.inference_mode():
        expected = w.model(w.x)
        for label, (fn, _) in calls.items():
            torch.testing.assert_close(fn(), expected, rtol=1e-3, atol=1e-3, msg=label)
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {label: [] for label in calls}
        labels = list(calls)
        for r in range(reps):  # interleaved, rotated order: drift hits every contender alike
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                samples[label].append(timed(calls[label][0]))
        result = {}
        for label, (fn, _) in calls.items():
            top, before = peak(fn)
            result[label] = {"median": statistics.median(samples[label]), "peak": top,
                             "added": top - before}  # fmt: skip
    for _, ex in calls.values():
        if ex is not None:
            ex.close()
    return result


# -- report ------------------------------------------------------------------------------------
def table(w: Workload, r: dict[str, dict[str, float]]) -> list[str]:
    eager = r["eager"]
    rows = [
        f"### {w.name}: {w.what}",
        "",
        "| contender | median ms | vs eager | peak memory vs eager | added memory vs eager |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, m in r.items():
        rows.append(
            f"| {label} | {m['median'] * 1e3:.3f} | {eager['median'] / m['median']:.2f}x | "
            f"{m['peak'] / eager['peak']:.2f}x | {m['added'] / max(eager['added'], 1):.2f}x |"
        )
    return [*rows, ""]


def targets(results: dict[str, dict[str, dict[str, float]]], streams: int) -> list[str]:
    def ratio(work: str, a: str, b: str) -> float:
        return results[work][a]["median"] / results[work][b]["median"]

    many, seq_graph, par = f"graph, {streams} streams", "graph, 1 stream", f"streams ({streams})"
    checks = [
        ("googlenet: multi-stream graph >= 2.5x eager", ratio("googlenet", "eager", many), 2.5),
        ("googlenet: multi-stream graph >= 1.2x sequential graph",
         ratio("googlenet", seq_graph, many), 1.2),
        ("towers: streams (no graph) >= 1.3x eager", ratio("towers", "eager", par), 1.3),
        ("chain: streams time <= 1.03x eager", 1 / ratio("chain", par, "eager"), 1 / 1.03),
    ]  # fmt: skip
    rows = ["## Targets (issue 6)", "", "| target | measured | met |", "|---|---:|:-:|"]
    for text, value, bound in checks:
        shown = 1 / value if text.startswith("chain") else value
        rows.append(f"| {text} | {shown:.2f}x | {'yes' if value >= bound else 'no'} |")
    worst = max(m["peak"] / r["eager"]["peak"] for r in results.values() for m in r.values())
    rows.append(f"| peak memory <= 1.1x eager (worst contender) | {worst:.2f}x | "
                f"{'yes' if worst <= 1.1 else 'no'} |")  # fmt: skip
    return [*rows, ""]


def report(results: dict, loads: list[Workload], streams: int, reps: int) -> str:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    rows = [
        "# CudaStreamExecutor benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"{props.multi_processor_count} SMs",
        f"- machine: {platform.machine()}, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- {reps} interleaved rounds; medians; inference mode; method in the script's docstring",
        "",
    ]
    rows += targets(results, streams)
    for w in loads:
        rows += table(w, results[w.name])
    return "\n".join(rows)


def check_on_cpu() -> None:
    """Build every workload on the CPU and check its graph against its eager model."""
    for w in workloads("cpu"):
        with torch.inference_mode():
            got = gx.SequentialExecutor().run(gx.plan(w.graph, inline_below=INLINE_BELOW), w.x)
            torch.testing.assert_close(got, w.model(w.x), rtol=1e-4, atol=1e-4)
        print(f"{w.name}: graph equals eager on the CPU ({w.what})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="interleaved rounds (default 50)")
    parser.add_argument("--streams", type=int, default=4, help="streams of the multi-stream runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (markdown)")
    parser.add_argument("--check", action="store_true", help="check the workloads on the CPU")
    args = parser.parse_args(argv)
    if args.check:
        check_on_cpu()
        return 0
    if not torch.cuda.is_available():
        print(f"CUDA is not available (torch {torch.__version__}): nothing was measured; "
              f"{args.out} was not written. Run this on a machine with a CUDA GPU.")  # fmt: skip
        return 0
    loads = workloads("cuda")
    results = {}
    for w in loads:
        results[w.name] = bench(w, args.streams, args.reps)
        print("\n".join(table(w, results[w.name])))
    text = report(results, loads, args.streams, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print("\n".join(targets(results, args.streams)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
