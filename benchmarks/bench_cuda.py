"""CudaStreamExecutor benchmark: eager vs one stream vs streams vs streams + CUDA graph.

Run ``python benchmarks/bench_cuda.py`` on a machine with a CUDA GPU; it prints a table per
workload and writes ``benchmarks/results/cuda.md`` (``--out``) and, with ``--json``, the raw
figures. On a machine without CUDA it says so, measures nothing and exits 0 (``--check`` still
builds the workloads on the CPU and checks each graph against its eager model).
``benchmarks/device_run.sh`` runs it on a lent GPU machine, after the GPU tests.

Workloads (``gx.Graph`` and eager ``nn.Module`` over the same layer objects, eval mode):

* ``googlenet``: a GoogLeNet-like network (conv-BN-ReLU stem, inception blocks 3a-5b, each
  with four branches and a concat, pooling, linear head) at batch 1, 224x224 (Opara's case).
* ``inception``: Inception-v3-like blocks at batch 1: three 35x35 blocks (1x1 | 1x1-5x5 |
  1x1-3x3-3x3 | pool-1x1) and two 17x17 blocks with factorized 7x7s (IOS's case).
* ``towers``: 8 MLP towers (512 -> 1024 -> 1024 -> 512) summed, then a head, at batch 8.
* ``chain``: 32 x (Linear 1024 -> 1024, ReLU) at batch 8: no parallelism to find.
* ``tv_googlenet``, ``tv_inception_v3``: torchvision's models traced with ``gx.trace`` (one
  node per op; skipped where torchvision does not import), batch 1.

Contenders (every graphexec one runs the same plan, made from parameter counts as
`GraphModule` makes it for this executor, unless the label says GPU time):

* ``eager``: the module called directly (one stream).
* ``one stream``: ``gx.CudaStreamExecutor(streams=1)``: graphexec's host overhead alone.
* ``streams (N)``: ``gx.CudaStreamExecutor(streams=N)``, dataflow schedule.
* ``graph, 1 stream``: a sequential CUDA graph (``streams=1, capture=True``).
* ``graph, N streams``: the multi-stream program captured into one CUDA graph.
* ``graph, N streams, GPU-time plan``: the same, on a plan arranged from node costs measured
  with CUDA events (`graphexec.gputime.time_nodes_cuda`) instead of parameter counts.

Method: all under ``torch.inference_mode()``; every contender's output is checked against
eager first (a contender that fails is reported with its error; the others still run); a few
warm-up calls each; then ``--reps`` rounds, each calling every contender once in a rotated
order. Each call is timed with two CUDA events on the caller's stream around it, after a
``torch.cuda.synchronize()`` (so the time is the GPU's, from the first enqueued work to the
last, including the gaps where it waited for the host's launches); the host's own wall time
around the synchronized call is kept beside it. Ratios are of medians from the same run. Peak
memory: ``torch.cuda.max_memory_allocated()`` over one call after a reset, as a ratio to
eager's; the second ratio counts only what the call adds above the memory allocated before it
(weights, inputs and, for CUDA graphs, their private pools, which stay allocated).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import graphexec as gx
from graphexec.gputime import time_nodes_cuda
from graphexec.interpret import compute_order, time_nodes
from graphexec.planner import arrange
from graphexec.policy import DEFAULT

INLINE_BELOW = DEFAULT.gpu_inline_below  # what plans for CUDA streams inline below

RESULTS = Path(__file__).parent / "results" / "cuda.md"
#: Published anchors (batch 1): Opara on GoogLeNet, IOS on Inception-v3, in ms.
ANCHORS = {
    "googlenet": "Opara: eager 3.70 ms, sequential CUDA graph 1.97 ms (1.88x), streams in one "
    "graph 1.16 ms (3.19x eager, 1.70x the sequential graph)",
    "inception": "IOS (Inception-v3): sequential 6.51 ms, IOS 4.03 ms (1.62x)",
}


# -- workloads ---------------------------------------------------------------------------------
def conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1) -> nn.Sequential:
    pad = (k[0] // 2, k[1] // 2) if isinstance(k, tuple) else k // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Branches(nn.Module):
    """Run each branch on the input and concatenate along channels."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def inception(cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> Branches:
    """GoogLeNet's block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 (as torchvision) | pool -> 1x1; cat."""
    return Branches(
        conv(cin, c1, 1),
        nn.Sequential(conv(cin, c3r, 1), conv(c3r, c3, 3)),
        nn.Sequential(conv(cin, c5r, 1), conv(c5r, c5, 3)),
        nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(cin, cp, 1)),
    )


_BLOCKS = [  # GoogLeNet's widths; "pool" is a 3x3/2 max-pool between stages
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "pool",
    (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128), "pool",
    (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
]  # fmt: skip


class Net(nn.Module):
    """stem -> blocks (`Branches` or pooling) -> head."""

    def __init__(self, stem: nn.Module, body: list[nn.Module], head: nn.Module):
        super().__init__()
        self.stem, self.body, self.head = stem, nn.ModuleList(body), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        return self.head(x)


def googlenet_like(classes: int = 1000) -> Net:
    stem = nn.Sequential(
        conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), conv(64, 64, 1),
        conv(64, 192, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
    )  # fmt: skip
    body = [nn.MaxPool2d(3, 2, ceil_mode=True) if b == "pool" else inception(*b) for b in _BLOCKS]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, classes))
    return Net(stem, body, head)


def inception_a(cin: int, pool: int) -> Branches:
    """Inception-v3's 35x35 block (torchvision's InceptionA)."""
    return Branches(
        conv(cin, 64, 1),
        nn.Sequential(conv(cin, 48, 1), conv(48, 64, 5)),
        nn.Sequential(conv(cin, 64, 1), conv(64, 96, 3), conv(96, 96, 3)),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(cin, pool, 1)),
    )


def inception_c(c7: int) -> Branches:
    """Inception-v3's 17x17 block with factorized 7x7s (torchvision's InceptionC), 768 in."""
    return Branches(
        conv(768, 192, 1),
        nn.Sequential(conv(768, c7, 1), conv(c7, c7, (1, 7)), conv(c7, 192, (7, 1))),
        nn.Sequential(conv(768, c7, 1), conv(c7, c7, (7, 1)), conv(c7, c7, (1, 7)),
                      conv(c7, c7, (7, 1)), conv(c7, 192, (1, 7))),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(768, 192, 1)),
    )  # fmt: skip


def inception_v3_like(classes: int = 1000) -> Net:
    """Three 35x35 blocks, a stride-2 reduction to 17x17x768, two 17x17 blocks, a head."""
    stem = conv(3, 192, 3)  # the input is already 35x35 (the blocks are what is measured)
    body = [inception_a(192, 32), inception_a(256, 64), inception_a(288, 64),
            conv(288, 768, 3, 2), inception_c(128), inception_c(160)]  # fmt: skip
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(768, classes))
    return Net(stem, body, head)


def net_graph(name: str) -> Callable[[Net], gx.Graph]:
    """One node per branch, a cat per block: four concurrent branches per block."""

    def build(m: Net) -> gx.Graph:
        g = gx.Graph(name)
        h = g.node("stem", m.stem, g.input("x"))
        for i, block in enumerate(m.body):
            if isinstance(block, Branches):
                outs = [g.node(f"b{i}.{j}", b, h) for j, b in enumerate(block.branches)]
                h = g.node(f"b{i}.cat", gx.cat(dim=1), *outs)
            else:
                h = g.node(f"b{i}", block, h)
        g.output(g.node("head", m.head, h))
        return g

    return build


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


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from torchvision import models

        return getattr(models, name)(weights=None, aux_logits=False, init_weights=False)

    return make


@dataclass
class Workload:
    name: str
    what: str
    model: nn.Module
    graph: gx.Graph
    x: torch.Tensor


#: name -> (description, model maker, graph builder (None: gx.trace), input shape)
WORKLOADS = {
    "googlenet": ("GoogLeNet-like, batch 1, 3x224x224", googlenet_like, net_graph("googlenet"),
                  (1, 3, 224, 224)),
    "inception": ("Inception-v3-like blocks (3 x 35x35, 2 x 17x17), batch 1", inception_v3_like,
                  net_graph("inception"), (1, 3, 35, 35)),
    "towers": ("8 MLP towers 512-1024-1024-512 summed, batch 8", Towers, towers_graph, (8, 512)),
    "chain": ("32 x (Linear 1024, ReLU), batch 8", chain_model, chain_graph, (8, 1024)),
    "tv_googlenet": ("torchvision googlenet, gx.trace, batch 1, 3x224x224",
                     torchvision_model("googlenet"), None, (1, 3, 224, 224)),
    "tv_inception_v3": ("torchvision inception_v3, gx.trace, batch 1, 3x299x299",
                        torchvision_model("inception_v3"), None, (1, 3, 299, 299)),
}  # fmt: skip


def workload(name: str, device: str, batch: int | None = None) -> Workload:
    """Build a workload; ``batch`` replaces its batch size (then named ``name@batch``)."""
    what, make, build, shape = WORKLOADS[name]
    if batch is not None:
        name, what, shape = f"{name}@{batch}", f"{what.split(', batch')[0]}, batch {batch}", (
            batch, *shape[1:])  # fmt: skip
    torch.manual_seed(0)
    model = make().to(device).eval()
    graph = gx.trace(model) if build is None else build(model)
    return Workload(name, what, model, graph, torch.randn(shape, device=device))


# -- measuring ---------------------------------------------------------------------------------
def gpu_time_plan(w: Workload, repeats: int = 5) -> tuple[gx.Plan, dict[str, float]]:
    """A plan arranged from node costs measured with CUDA events; and what was measured."""
    names = compute_order(w.graph)
    gpu = time_nodes_cuda(w.graph, names, (w.x,), repeats)
    host = time_nodes(w.graph, names, (w.x,), repeats)
    costs = {n: statistics.median(s) for n, s in gpu.items()}
    info = {
        "gpu_sum_ms": 1e3 * sum(costs.values()),
        "host_sum_ms": 1e3 * sum(statistics.median(s) for s in host.values()),
        "held_runs": gpu.held,
        "runs": gpu.runs,
    }
    return arrange(w.graph, costs, inline_below=INLINE_BELOW), info


def contenders(w: Workload, streams: int, gpu_plan: gx.Plan | None) -> dict[str, tuple]:
    """label -> (call, executor or None, plan or None)."""
    plan = gx.plan(w.graph, inline_below=INLINE_BELOW)
    made = {
        "one stream": (gx.CudaStreamExecutor(streams=1), plan),
        f"streams ({streams})": (gx.CudaStreamExecutor(streams=streams), plan),
        "graph, 1 stream": (gx.CudaStreamExecutor(streams=1, capture=True), plan),
        f"graph, {streams} streams": (gx.CudaStreamExecutor(streams=streams, capture=True), plan),
    }
    if gpu_plan is not None:
        made[f"graph, {streams} streams, GPU-time plan"] = (
            gx.CudaStreamExecutor(streams=streams, capture=True),
            gpu_plan,
        )
    calls: dict[str, tuple] = {"eager": (lambda: w.model(w.x), None, None)}
    for label, (ex, p) in made.items():
        calls[label] = (lambda ex=ex, p=p: ex.run(p, w.x), ex, p)
    return calls


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(GPU seconds between events around the call, host seconds of the synchronized call)."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3, time.perf_counter() - t


def peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak bytes allocated during one call, bytes allocated before it)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated(), before


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def bench(w: Workload, streams: int, reps: int, warmup: int = 5) -> dict:
    """Every contender of one workload: medians, peaks, errors, and what the plans were."""
    info: dict = {"what": w.what, "contenders": {}, "errors": {}, "programs": {}}
    gpu_plan = None
    try:
        with torch.inference_mode():
            gpu_plan, info["gpu_time"] = gpu_time_plan(w)
    except Exception as exc:  # reported; the other contenders still run
        info["errors"]["GPU-time plan"] = error_text(exc)
        traceback.print_exc()
    calls = contenders(w, streams, gpu_plan)
    ok = {}
    with torch.inference_mode():
        expected = w.model(w.x)
        for label, (fn, ex, p) in calls.items():
            try:
                torch.testing.assert_close(fn(), expected, rtol=1e-3, atol=1e-3)
                for _ in range(warmup):
                    fn()
                ok[label] = fn
            except Exception as exc:
                info["errors"][label] = error_text(exc)
                print(f"[{w.name}] {label} FAILED: {info['errors'][label]}", flush=True)
                traceback.print_exc()
            if ex is not None and p is not None:
                prog = ex.program(p)
                info["programs"][label] = (f"{len(p.tasks)} tasks, {p.max_width} wide, "
                                           f"{sum(bool(lane) for lane in prog.lanes)} streams "
                                           f"used, {prog.n_waits} waits")  # fmt: skip
        gpu_s: dict[str, list[float]] = {label: [] for label in ok}
        host_s: dict[str, list[float]] = {label: [] for label in ok}
        labels = list(ok)
        for r in range(reps):  # interleaved, rotated order: drift hits every contender alike
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                g, h = timed(ok[label])
                gpu_s[label].append(g)
                host_s[label].append(h)
        for label, fn in ok.items():
            top, before = peak(fn)
            info["contenders"][label] = {
                "gpu_ms": 1e3 * statistics.median(gpu_s[label]),
                "host_ms": 1e3 * statistics.median(host_s[label]),
                "spread_ms": 1e3 * (max(gpu_s[label]) - min(gpu_s[label])),
                "peak": top,
                "added": top - before,
            }
    for _, ex, _ in calls.values():
        if ex is not None:
            ex.close()
    return info


# -- report ------------------------------------------------------------------------------------
def table(name: str, r: dict) -> list[str]:
    rows = [f"### {name}: {r['what']}", ""]
    if name in ANCHORS:
        rows += [f"Anchor: {ANCHORS[name]}.", ""]
    c = r["contenders"]
    if "eager" not in c:
        return [*rows, f"eager failed: {r['errors'].get('eager', '?')}", ""]
    e = c["eager"]
    rows += [
        "| contender | GPU ms (events) | host ms | vs eager | peak mem vs eager | added mem vs "
        "eager |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in c.items():
        rows.append(
            f"| {label} | {m['gpu_ms']:.3f} | {m['host_ms']:.3f} | "
            f"{e['gpu_ms'] / m['gpu_ms']:.2f}x | {m['peak'] / e['peak']:.2f}x | "
            f"{m['added'] / max(e['added'], 1):.2f}x |"
        )
    rows.append("")
    for label, err in r["errors"].items():
        rows.append(f"- **{label} failed**: `{err}`")
    for label, text in r["programs"].items():
        rows.append(f"- {label}: {text}")
    if "gpu_time" in r:
        t = r["gpu_time"]
        rows.append(
            f"- node costs: GPU time (CUDA events, held queue) sums to {t['gpu_sum_ms']:.3f} ms, "
            f"host time to {t['host_sum_ms']:.3f} ms; {t['held_runs']} of {t['runs']} runs held"
        )
    return [*rows, ""]


def targets(results: dict, streams: int) -> list[str]:
    def ms(work: str, label: str) -> float | None:
        m = results.get(work, {}).get("contenders", {}).get(label)
        return None if m is None else m["gpu_ms"]

    def ratio(work: str, a: str, b: str) -> float | None:
        x, y = ms(work, a), ms(work, b)
        return None if x is None or y is None else x / y

    many, seq_graph, par = f"graph, {streams} streams", "graph, 1 stream", f"streams ({streams})"
    checks = [
        ("googlenet: streams + graph vs eager", ratio("googlenet", "eager", many), 2.5),
        ("googlenet: streams + graph vs sequential graph",
         ratio("googlenet", seq_graph, many), 1.2),
        ("chain: eager's time / streams' time (>= 1/1.03)", ratio("chain", "eager", par),
         1 / 1.03),
    ]  # fmt: skip
    rows = ["## Targets (issue 24)", "", "| target | bound | measured | met |",
            "|---|---:|---:|:-:|"]  # fmt: skip
    for text, value, bound in checks:
        shown = "–" if value is None else f"{value:.2f}x"
        met = "–" if value is None else ("yes" if value >= bound else "no")
        rows.append(f"| {text} | ≥ {bound:.2f}x | {shown} | {met} |")
    for work, r in results.items():
        c = r.get("contenders", {})
        if "eager" not in c:
            continue
        worst = max(c.items(), key=lambda kv: kv[1]["peak"])
        value = worst[1]["peak"] / c["eager"]["peak"]
        rows.append(f"| {work}: peak memory vs eager (worst: {worst[0]}) | ≤ 1.10x | "
                    f"{value:.2f}x | {'yes' if value <= 1.1 else 'no'} |")  # fmt: skip
    return [*rows, ""]


def header(streams: int, reps: int) -> list[str]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return [
        "# CudaStreamExecutor benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"{props.multi_processor_count} SMs",
        f"- machine: {platform.machine()}, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- {reps} interleaved rounds, {streams} streams; medians of CUDA-event times; inference "
        "mode; method in the script's docstring",
        "",
    ]


def check_on_cpu(names: list[str]) -> None:
    """Build every workload on the CPU and check its graph against its eager model."""
    for name in names:
        try:
            w = workload(name, "cpu")
        except ImportError as exc:
            print(f"{name}: skipped ({error_text(exc)})")
            continue
        with torch.inference_mode():
            got = gx.SequentialExecutor().run(gx.plan(w.graph, inline_below=INLINE_BELOW), w.x)
            torch.testing.assert_close(got, w.model(w.x), rtol=1e-4, atol=1e-4)
        print(f"{name}: graph equals eager on the CPU ({w.what})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="interleaved rounds (default 50)")
    parser.add_argument("--streams", type=int, default=4, help="streams of the multi-stream runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (markdown)")
    parser.add_argument("--json", type=Path, default=None, help="raw figures (json)")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds; workloads not started by then are skipped")  # fmt: skip
    parser.add_argument(
        "--batch",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes to run each workload at (default: each its own)",
    )
    parser.add_argument("--check", action="store_true", help="check the workloads on the CPU")
    args = parser.parse_args(argv)
    if args.check:
        check_on_cpu(args.workloads)
        return 0
    if not torch.cuda.is_available():
        print(f"CUDA is not available (torch {torch.__version__}): nothing was measured; "
              f"{args.out} was not written. Run this on a machine with a CUDA GPU.")  # fmt: skip
        return 0
    start, results = time.perf_counter(), {}
    runs = [(n, b) for b in (args.batch or [None]) for n in args.workloads]
    for base, batch in runs:
        name = base if batch is None else f"{base}@{batch}"
        if time.perf_counter() - start > args.budget:
            print(f"[{name}] skipped: past the {args.budget:.0f} s budget", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            results[name] = bench(workload(base, "cuda", batch), args.streams, args.reps)
        except Exception as exc:
            results[name] = {"what": WORKLOADS[base][0], "contenders": {}, "programs": {},
                             "errors": {"workload": error_text(exc)}}  # fmt: skip
            traceback.print_exc()
        results[name]["seconds"] = time.perf_counter() - t0
        print("\n".join(table(name, results[name])), flush=True)
        if args.json:  # after each workload: a stage cut short keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
        text = "\n".join(header(args.streams, args.reps) + targets(results, args.streams)
                         + [line for n, r in results.items() for line in table(n, r)])  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print("\n".join(targets(results, args.streams)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
