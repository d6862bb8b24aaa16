"""Batch inference with a transformers model over token ids on disk: graphexec's `map_blocks`
against the hand-written Dask pattern, on one embedded cluster.

Run ``python -m benchmarks.bench_dask_bert`` (about 3 minutes on 2 cores); it prints a report
and writes ``benchmarks/results/dask_bert.md``. Measured in this one run:

* the dataset: ``--rows`` sequences (default 8,192) of ``--seq`` token ids (default 64) and
  their attention masks (padding after a random length), written to a temporary folder as two
  Zarr arrays (chunks of ``--block`` rows), read by the workers;
* the model: the zoo's BERT-like ``BertModel`` (2 layers, hidden 128, random weights), its
  pooled output (``pooler_output``, one vector per row) computed back to the client;
* the cluster: one embedded LocalCluster, 2 nanny-managed 1-thread worker processes.

Contenders, timed in interleaved rounds (each round runs each once; medians of per-round
ratios):

1. graphexec: ``gx.trace(model, example_inputs=...)`` (fx cannot trace BERT: it imports
   through ``torch.export``, with a dynamic batch), then ``ex.map_blocks(graph, ids, mask)``;
   the collection is built anew each round (placing the weights is a check: they went once);
2. hand-written Dask: the model scattered once to every worker by hand
   (``client.scatter(model, broadcast=True)``) and ``da.map_blocks(predict, ids, mask,
   model_future)``: Dask's batch-prediction pattern, running the eager model.

Also: outputs against eager PyTorch on every row, the bytes the client sent against the
dataset's, and the cost of a block task itself: both patterns over ``--tiny-blocks`` blocks of
one row through a one-layer model, whose time is then almost all Dask's and graphexec's own
per-task work (the difference per block is graphexec's overhead on top of Dask's).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import dask
import dask.array as da
import distributed
import numpy as np
import torch
import torch.nn as nn
import zarr

import graphexec as gx
from benchmarks import zoo
from benchmarks.bench_dask import _interleaved  # the same rounds and ratios as bench_dask
from graphexec.executors.dask import DaskExecutor

RESULTS = Path(__file__).parent / "results" / "dask_bert.md"


def _predict(ids: np.ndarray, mask: np.ndarray, model: nn.Module) -> np.ndarray:
    """The hand-written block function: the eager model on one block, its pooled output."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(ids)), torch.from_numpy(np.array(mask)))
    return out.pooler_output.numpy()


def _tiny(x: np.ndarray, model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.array(x))).numpy()


def write_tokens(folder: Path, rows: int, seq: int, block: int) -> tuple[str, str, int]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, zoo.VOCAB, (rows, seq), generator=g)
    mask = (torch.arange(seq) < torch.randint(8, seq + 1, (rows, 1), generator=g)).long()
    paths = str(folder / "ids.zarr"), str(folder / "mask.zarr")
    for path, t in zip(paths, (ids * mask, mask), strict=True):
        da.from_array(t.numpy(), chunks=(block, seq)).to_zarr(path)
    return *paths, ids.nbytes + mask.nbytes


def run(rows: int, seq: int, block: int, rounds: int, tiny_blocks: int) -> dict:
    model = zoo.build("bert", traced=False).model
    r: dict = {"load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="gx-bench-bert-") as tmp:
        ids_path, mask_path, r["dataset_bytes"] = write_tokens(Path(tmp), rows, seq, block)
        ids = torch.from_numpy(zarr.open_array(ids_path, mode="r")[:])
        mask = torch.from_numpy(zarr.open_array(mask_path, mode="r")[:])
        graph = gx.trace(model, example_inputs=(ids[:2], mask[:2]))  # rows as the data has them
        r["imported_by"] = graph.imported_by
        with torch.no_grad():
            want = model(ids, mask).pooler_output
        with DaskExecutor(n_workers=2, dashboard_address=None, timeout="30s") as ex:
            remote = ex.client.scatter(model, broadcast=True)

            def ours():
                out = ex.map_blocks(graph, da.from_zarr(ids_path), da.from_zarr(mask_path))
                return out.pooler_output.compute()

            def hand():
                ids, mask = da.from_zarr(ids_path), da.from_zarr(mask_path)
                out = da.map_blocks(_predict, ids, mask, remote, dtype="float32",
                                    chunks=(ids.chunks[0], (zoo.HIDDEN["hidden_size"],)))
                return out.compute()  # fmt: skip

            runs = {"graphexec map_blocks": ours, "hand-written map_blocks": hand}
            r["equal"] = {k: bool(torch.allclose(torch.tensor(fn()), want, rtol=1e-4, atol=1e-5))
                          for k, fn in runs.items()}  # fmt: skip
            before = ex.sent_bytes
            ours()
            r["sent"] = ex.sent_bytes - before  # one whole pass, weights already there
            r["scattered"] = ex.scattered_nbytes
            r["times"] = _interleaved(runs, rounds)
            r["tiny"] = _per_task(ex, tiny_blocks, rounds)
    r["load_end"] = os.getloadavg()[0]
    return r


def _per_task(ex: DaskExecutor, blocks: int, rounds: int) -> dict:
    """Seconds per block task of each pattern over ``blocks`` one-row blocks of a tiny model."""
    torch.manual_seed(0)
    tiny = nn.Linear(8, 8).eval()
    g = gx.Graph("tiny")
    g.output(g.node("linear", tiny, g.input("x")))
    x = da.from_array(np.random.default_rng(0).standard_normal((blocks, 8)).astype("float32"),
                      chunks=(1, 8))  # fmt: skip
    x = x.persist()  # the blocks already on the workers: only the model tasks are timed
    distributed.wait(distributed.futures_of(x))
    remote = ex.client.scatter(tiny, broadcast=True)
    runs = {
        "graphexec block task": lambda: ex.map_blocks(g, x).compute(),
        "hand-written block task": lambda: x.map_blocks(_tiny, remote, dtype="float32").compute(),
    }
    times = _interleaved(runs, rounds)
    return {k: v / blocks if not k.startswith("ratio") else v for k, v in times.items()}


def versions() -> str:
    import transformers

    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, dask {dask.__version__}, distributed "
            f"{distributed.__version__}, zarr {zarr.__version__}")  # fmt: skip


def report(r: dict, args: argparse.Namespace, command: str) -> str:
    t, tiny = r["times"], r["tiny"]
    ours, hand = "graphexec map_blocks", "hand-written map_blocks"
    gt, ht = "graphexec block task", "hand-written block task"
    share = 100 * r["sent"] / r["dataset_bytes"]
    lines = [
        "# Batch inference with BERT over token ids on disk: map_blocks on Dask",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: {versions()}",
        f"- command: `{command}`",
        f"- load average (1 min): {r['load_start']:.2f} at the start, {r['load_end']:.2f} at the "
        f"end ({os.cpu_count()} cores; no load was started on purpose)",
        f"- dataset: {args.rows} sequences of {args.seq} token ids and their attention masks "
        f"(int64, {r['dataset_bytes'] / 2**20:.1f} MiB), two Zarr arrays in chunks of "
        f"{args.block} rows in a temporary folder, read by the workers",
        "- model: the zoo's BERT-like BertModel (2 layers, hidden 128, random weights); its "
        "pooled output computed back to the client",
        f"- graphexec's graph: gx.trace(model, example_inputs=...), imported by {r['imported_by']}",
        "- cluster: one embedded LocalCluster, 2 nanny-managed 1-thread worker processes, for "
        "both contenders; torch at 1 thread per worker",
        f"- timings: {args.rounds} interleaved rounds after a warm-up; medians; ratios are "
        "medians of per-round ratios",
        "",
        "| contender | s | sequences/s | equals eager on every row |",
        "|---|---:|---:|---|",
    ]
    for k in (ours, hand):
        lines.append(f"| {k} | {t[k]:.2f} | {args.rows / t[k]:,.0f} | "
                     f"{'yes' if r['equal'][k] else 'NO'} |")  # fmt: skip
    lines += [
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        "| outputs equal eager PyTorch on every row | yes | "
        + ("yes" if all(r["equal"].values()) else "NO") + " |",
        f"| throughput vs the hand-written pattern (hand / graphexec time) | >= 1.0x | "
        f"{t[f'ratio: {hand} / {ours}']:.2f}x |",
        f"| bytes sent from the client in one pass / dataset bytes | <= 1% | {r['sent']} B "
        f"({share:.2f}%); weights {r['scattered']} B, once per worker before the first pass |",
        f"| a block task's own cost ({args.tiny_blocks} one-row blocks, tiny model) | - | "
        f"graphexec {1e3 * tiny[gt]:.2f} ms, hand-written {1e3 * tiny[ht]:.2f} ms per block "
        f"({1e3 * (tiny[gt] - tiny[ht]):+.2f} ms) |",
        "",
        "Throughput ratio above 1: graphexec is faster.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8_192)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tiny-blocks", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS, help="report file ('-': none)")
    args = p.parse_args(argv)
    command = "python -m benchmarks.bench_dask_bert " + " ".join(argv or sys.argv[1:])
    r = run(args.rows, args.seq, args.block, args.rounds, args.tiny_blocks)
    text = report(r, args, command.strip())
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
