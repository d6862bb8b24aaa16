"""Data parallelism benchmark: one batch split over lanes or workers, against eager (one run).

Run ``python benchmarks/bench_split.py`` (about 3-4 minutes on 2 cores); it prints a report
and writes ``benchmarks/results/split.md``. For each model, in interleaved rounds (every
contender once per round, in a shuffled order; medians of per-round ratios to eager):

* ``eager``: the model at the caller's intra-op threads (torch's default: every core);
* ``eager 1 thread``: the model on a pool thread at 1 intra-op thread;
* ``hand split``: the seeds' pattern written by hand: ``torch.tensor_split`` the batch, a
  ``ThreadPoolExecutor`` of one-thread workers runs the model on each shard, ``torch.cat``;
* ``gx split threads``: ``gx.plan(graph, inputs, data_parallel=2)`` on a `ThreadExecutor`;
* ``gx split dask``: the same plan on a `DaskExecutor` (an embedded cluster of two 1-thread
  worker processes): each shard's whole plan on a worker, in one call;
* ``gx auto``: ``gx.plan(graph, inputs, data_parallel="auto")`` on a `ThreadExecutor`, and
  what it chose (its decision line).

Models: a few zoo models (`benchmarks.zoo`, random weights, eval mode) at batch 2 and 8, and the
multi-branch CNN of `benchmarks.workloads` at batch 32 (32 px images). Every contender's
output is checked against eager's before timing. CUDA streams are not measured here (no GPU
on this machine). The machine may be shared: the report records the load average at the
start and the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `graphexec` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphexec as gx
from benchmarks import workloads, zoo
from graphexec.decisions import SPLIT, last
from graphexec.executors.base import BudgetLanes, enter_lane, process_default

#: (zoo model, batch): the issue's measurements were at batch 2 and 8
ZOO = (("googlenet", 2), ("googlenet", 8), ("resnet18", 8), ("mobilenet_v3_small", 8),
       ("bert", 2), ("bert", 8), ("clip", 8))  # fmt: skip
CNN_BATCH, CNN_SIZE, SHARDS = 32, 32, 2
OUT = Path(__file__).parent / "results" / "split.md"


def _leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _close(got: Any, want: Any) -> bool:
    a, b = _leaves(got), _leaves(want)
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-3, atol=1e-4)
        for x, y in zip(a, b, strict=True)
    )


def _batched(inputs: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """The zoo's batch-2 inputs at ``batch``: fresh values, masks as the first sample's."""
    out = []
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            out.append(t)
        elif t.is_floating_point():
            out.append(torch.randn(batch, *t.shape[1:]))
        elif t.max() > 1:  # token ids: fresh ones, so no two samples are the same
            out.append(torch.randint(0, int(t.max()) + 1, (batch, *t.shape[1:])))
        else:  # masks and token types
            out.append(t[:1].expand(batch, *t.shape[1:]).clone())
    return tuple(out)


def models() -> list[tuple[str, Any, gx.Graph, tuple[Any, ...]]]:
    """(name, eager model, graph, inputs) for each model measured."""
    found = []
    for key, batch in ZOO:
        zm = zoo.build(key)
        zm.model.eval()
        inputs = _batched(zm.graph_inputs, batch)
        found.append((f"{key} [batch {batch}]", zm.model, zm.graph, inputs))
    torch.manual_seed(0)
    model = workloads.MultiBranchCNN().eval()
    x = torch.randn(CNN_BATCH, 3, CNN_SIZE, CNN_SIZE)
    name = f"multi-branch CNN [{CNN_BATCH},3,{CNN_SIZE},{CNN_SIZE}]"
    found.append((name, model, gx.trace(model, name="cnn"), (x,)))
    return found


def hand_split(pool: concurrent.futures.ThreadPoolExecutor, model: Any, inputs: tuple) -> Any:
    """The seeds' pattern: shards of every input, the model on each in a pool, concatenated."""
    shards = list(zip(*(torch.tensor_split(t, SHARDS) for t in inputs), strict=True))
    parts = list(pool.map(lambda s: _no_grad(model, s), shards))
    return pytree.tree_map(lambda *xs: torch.cat(xs), *parts) if len(parts) > 1 else parts[0]


def _no_grad(model: Any, inputs: tuple) -> Any:
    with torch.no_grad():  # grad mode is thread-local: a pool thread starts with grad on
        return model(*inputs)


def measure(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each contender over interleaved, shuffled rounds (after a warm-up)."""
    rng = random.Random(0)
    names = list(runs)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for n in names:
            runs[n]()
        for _ in range(rounds):
            rng.shuffle(names)
            for n in names:
                t0 = time.perf_counter()
                runs[n]()
                samples[n].append(time.perf_counter() - t0)
    first = next(iter(runs))
    ratios = {n: statistics.median(s / f for s, f in zip(samples[n], samples[first], strict=True))
              for n in runs}  # fmt: skip
    return {"eager_s": statistics.median(samples[first]), **ratios}


def bench(name: str, model: Any, graph: gx.Graph, inputs: tuple, dask_ex: Any, rounds: int,
          lanes: BudgetLanes, pool: Any, threads: gx.ThreadExecutor) -> dict[str, Any]:  # fmt: skip
    t0 = time.perf_counter()
    auto = gx.plan(graph, inputs, data_parallel="auto")
    said = str(last(auto.decisions, SPLIT))
    try:
        forced = gx.plan(graph, inputs, data_parallel=SHARDS)
    except gx.SplitError as exc:  # a batch-dependent model: refused, nothing to time split
        forced, refused = None, str(exc)
    planning = time.perf_counter() - t0
    with torch.no_grad():
        want = model(*inputs)
    runs = {
        "eager": lambda: model(*inputs),
        "eager 1 thread": lambda: lanes.call(1, model, *inputs),
        "hand split": lambda: hand_split(pool, model, inputs),
        "gx split threads": lambda: threads.run(forced, *inputs),
        "gx split dask": lambda: dask_ex.run(forced, *inputs),
        "gx auto": lambda: threads.run(auto, *inputs),
    }
    failed = {}
    if forced is None:
        failed = {n: f"refused: {refused}" for n in ("gx split threads", "gx split dask")}
        runs = {n: fn for n, fn in runs.items() if n not in failed}
    with torch.no_grad():
        for n, fn in list(runs.items()):
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - reported below the table, not hidden
                if n != "gx split dask":
                    raise
                failed[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                del runs[n]
                continue
            if not _close(out, want):
                if n != "hand split":
                    raise AssertionError(f"{name}: {n} differs from eager")
                failed[n] = ("returns another answer than eager, silently: the model mixes "
                             "the samples of a batch")  # fmt: skip
                del runs[n]
    row = measure(runs, rounds)
    return {"model": name, **row, "auto": said, "auto_split": auto.data_parallel,
            "planning_s": planning, "failed": failed}  # fmt: skip


def _load() -> float:
    return os.getloadavg()[0]


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = ["eager 1 thread", "hand split", "gx split threads", "gx split dask", "gx auto"]
    lines = [
        "# Data parallelism benchmark (`data_parallel=`)",
        "",
        f"- date: {meta['date']}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {meta['dask']}",
        f"- command: `{meta['command']}`",
        f"- load average (1 min): {meta['load0']:.2f} at the start, {meta['load1']:.2f} at the "
        f"end ({os.cpu_count()} cores; the machine is shared with other work)",
        f"- {meta['rounds']} interleaved rounds per model, contenders shuffled each round; "
        "ratios are medians of per-round ratios to eager at the caller's "
        f"{meta['threads']} intra-op threads (below 1: faster than eager)",
        f"- splits are {SHARDS} shards; Dask: embedded LocalCluster, 2 worker processes of 1 "
        "thread (torch_threads=1)",
        "",
        "| model | eager ms | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for r in rows:
        cells = " | ".join(f"{r[c]:.2f}x" if c in r else "n/a" for c in cols)
        lines.append(f"| {r['model']} | {r['eager_s'] * 1e3:.1f} | {cells} |")
    lines += ["", 'What `"auto"` chose (its decision line, measured while planning):', ""]
    for r in rows:
        lines.append(f"- {r['model']}: {r['auto']} (planning both plans: {r['planning_s']:.1f} s)")
    for r in rows:
        for c, why in r["failed"].items():
            what = why if why.startswith(("refused", "returns")) else f"the call failed: `{why}`"
            lines.append(f"- {r['model']}: {c} n/a: {what}")
    lines += ["", "CUDA streams: not measured (no GPU on this machine).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--only", nargs="*", help="model names starting with these")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load0": _load(), "rounds": args.rounds, "threads": torch.get_num_threads(),
            "command": "python benchmarks/bench_split.py" + "".join(
                f" {a}" for a in (argv if argv is not None else sys.argv[1:]))}  # fmt: skip
    import dask

    # planned here, in this run: not decisions another process cached
    os.environ["GRAPHEXEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-split-")

    meta["dask"] = dask.__version__
    found = models()
    if args.only:
        found = [m for m in found if m[0].startswith(tuple(args.only))]
    rows = []
    lanes = BudgetLanes()
    pool = concurrent.futures.ThreadPoolExecutor(
        SHARDS, initializer=enter_lane, initargs=(1, process_default())
    )
    try:
        with gx.DaskExecutor(n_workers=2, dashboard_address=None, torch_threads=1) as dask_ex, \
                gx.ThreadExecutor() as threads:  # fmt: skip
            for name, model, graph, inputs in found:
                row = bench(name, model, graph, inputs, dask_ex, args.rounds, lanes, pool, threads)
                rows.append(row)
                print(f"{name}: eager {row['eager_s'] * 1e3:.1f} ms; " + ", ".join(
                    f"{k} {row[k]:.2f}x" for k in row
                    if k.startswith(("eager ", "hand", "gx"))
                ) + f"; auto: {row['auto']}", flush=True)  # fmt: skip
    finally:
        pool.shutdown()
        lanes.close()
    meta["load1"] = _load()
    text = render(rows, meta)
    print(text)
    if not args.no_write:
        OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
