"""Dask where the data lives: `map_blocks` / `map_partitions` against Dask's hand-written pattern.

Run ``python benchmarks/bench_dask_data.py`` (about 2 minutes on 2 cores); it prints a report
and writes ``benchmarks/results/dask_data.md``. Measured in this one run, on one embedded
cluster (2 nanny-managed 1-thread workers), with a dataset written to a temporary folder:

* ``--rows`` rows (default 50,000) of 256 float32 features, as a Zarr array (chunks of
  ``--block`` rows) and as Parquet (one file per ``--block`` rows);
* a four-tower model (Linear 256->512->256 each, summed, Linear 256->10), eager and as a graph.

Contenders, each computing every row's outputs back to the client, timed in interleaved rounds
(each round runs every contender once; medians of per-round ratios):

1. ``ex.map_blocks(plan, da.from_zarr(path)).compute()``
2. hand-written Dask over the same Zarr array: the model scattered by hand
   (``client.scatter(model, broadcast=True)``, once) and ``map_blocks(predict, model_future)``:
   Dask's batch-prediction pattern;
3. ``ex.map_partitions(plan, dd.read_parquet(path), columns=...).compute()``
4. hand-written Dask over the same Parquet files, ``map_partitions`` likewise;
5. ``ex.map(plan, blocks)``: the same blocks read on the client (zarr) and sent through it.

Also: outputs against eager PyTorch on every row, bytes the client sent (``ex.sent_bytes``)
per contender against the dataset's bytes, and a worker SIGKILLed mid-computation (persisted
blocks: once one is done, a worker dies; the result must still equal eager).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path

import dask
import dask.array as da
import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import zarr

import graphexec as gx
from benchmarks.bench_dask import _interleaved  # the same rounds and ratios as bench_dask
from graphexec.executors.dask import DaskExecutor

RESULTS = Path(__file__).parent / "results" / "dask_data.md"
D, HIDDEN, OUT = 256, 512, 10
FEATS = [f"f{i}" for i in range(D)]


class FourTowers(nn.Module):
    """x -> four towers (Linear-ReLU-Linear) -> sum -> head: eager."""

    def __init__(self):
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D)) for _ in range(4)
        )
        self.head = nn.Linear(D, OUT)

    def forward(self, x):
        return self.head(sum(t(x) for t in self.towers))


def towers_graph(m: FourTowers) -> gx.Graph:
    g = gx.Graph("four_towers")
    x = g.input("x")
    s = g.node("sum", gx.add(), *(g.node(f"tower{i}", t, x) for i, t in enumerate(m.towers)))
    g.output(g.node("head", m.head, s))
    return g


# -- Dask's own pattern, by hand ------------------------------------------------------------------
def _predict_block(block: np.ndarray, model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.array(block))).numpy()


def _predict_partition(part: pd.DataFrame, model: nn.Module) -> pd.DataFrame:
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(part[FEATS].to_numpy(dtype="float32")))).numpy()
    return pd.DataFrame(out, columns=[f"head_{i}" for i in range(OUT)], index=part.index)


def _read_rows(file: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(pd.read_parquet(file)[FEATS].to_numpy(dtype="float32")))


def _out_meta() -> pd.DataFrame:
    return pd.DataFrame({f"head_{i}": pd.Series([], dtype="float32") for i in range(OUT)})


# -- the run --------------------------------------------------------------------------------------
def write_dataset(folder: Path, rows: int, block: int) -> tuple[str, str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((rows, D)).astype("float32")
    zpath, ppath = str(folder / "x.zarr"), str(folder / "x.parquet")
    da.from_array(x, chunks=(block, D)).to_zarr(zpath)
    frame = pd.DataFrame(x, columns=FEATS)
    dd.from_pandas(frame, chunksize=block, sort=False).to_parquet(ppath, write_index=False)
    return zpath, ppath, x


def _sent(ex: DaskExecutor, fn) -> int:
    before = ex.sent_bytes
    fn()
    return ex.sent_bytes - before


def _killed_mid_run(ex: DaskExecutor, plan: gx.Plan, zpath: str, want: np.ndarray) -> str:
    """Persist the blocks, SIGKILL a worker once one is done, compare the result with eager."""
    y = ex.map_blocks(plan, da.from_zarr(zpath).rechunk((500, D))).persist()
    futures = distributed.futures_of(y)
    distributed.wait(futures, return_when="FIRST_COMPLETED")
    done = sum(f.done() for f in futures)
    address, pid = sorted(ex.client.run(os.getpid).items())[0]
    os.kill(pid, signal.SIGKILL)
    got = y.compute()
    ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
    ex.client.wait_for_workers(2, timeout=60)
    return (
        f"{len(futures)} blocks persisted, {done} done when worker {address} was SIGKILLed: "
        f"result {'equals' if ok else 'DIFFERS FROM'} eager on every row"
    )


def run(rows: int, block: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = FourTowers().eval()
    plan = gx.plan(towers_graph(model))
    r: dict = {"load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="gx-bench-data-") as tmp:
        zpath, ppath, x = write_dataset(Path(tmp), rows, block)
        r["dataset_bytes"] = x.nbytes
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        with DaskExecutor(n_workers=2, dashboard_address=None, timeout="30s") as ex:
            client = ex.client
            remote = client.scatter(model, broadcast=True)
            z = zarr.open_array(zpath, mode="r")

            def ours_zarr():
                return ex.map_blocks(plan, da.from_zarr(zpath)).compute()

            def hand_zarr():
                arr = da.from_zarr(zpath)
                return arr.map_blocks(
                    _predict_block, remote, dtype="float32", chunks=(arr.chunks[0], (OUT,))
                ).compute()

            def ours_parquet():
                frame = dd.read_parquet(ppath)
                return ex.map_partitions(plan, frame, columns={"x": FEATS}).compute().to_numpy()

            def hand_parquet():
                frame = dd.read_parquet(ppath)
                out = frame.map_partitions(_predict_partition, remote, meta=_out_meta())
                return out.compute().to_numpy()

            def ours_map_zarr():
                blocks = (torch.from_numpy(z[i : i + block]) for i in range(0, rows, block))
                outs = ex.map(plan, blocks, chunk=1, progress=False)
                return torch.cat(list(outs)).numpy()

            files = sorted(Path(ppath).glob("*.parquet"), key=lambda f: int(f.stem.split(".")[1]))

            def ours_map_parquet():
                blocks = (_read_rows(f) for f in files)
                outs = ex.map(plan, blocks, chunk=1, progress=False)
                return torch.cat(list(outs)).numpy()

            runs = {
                "map_blocks (zarr)": ours_zarr,
                "hand-written map_blocks (zarr)": hand_zarr,
                "map_partitions (parquet)": ours_parquet,
                "hand-written map_partitions (parquet)": hand_parquet,
                "ex.map, zarr read on the client": ours_map_zarr,
                "ex.map, parquet read on the client": ours_map_parquet,
            }
            r["equal"] = {
                k: bool(np.allclose(fn(), want, rtol=1e-4, atol=1e-5)) for k, fn in runs.items()
            }
            r["sent"] = {k: _sent(ex, runs[k]) for k in runs}  # the hand-written: its graph
            r["times"] = _interleaved(runs, rounds)
            r["killed"] = _killed_mid_run(ex, plan, zpath, want)
    r["load_end"] = os.getloadavg()[0]
    return r


def versions() -> str:
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}, zarr {zarr.__version__}, "
        f"pandas {pd.__version__}, pyarrow {__import__('pyarrow').__version__}"
    )


def report(r: dict, rows: int, block: int, rounds: int, command: str) -> str:
    t = r["times"]
    names = [k for k in r["equal"]]
    lines = [
        "# Dask where the data lives: map_blocks / map_partitions",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- versions: {versions()}",
        f"- command: `{command}`",
        f"- load average (1 min): {r['load_start']:.2f} at the start, {r['load_end']:.2f} at the "
        f"end ({os.cpu_count()} cores; the machine is shared with other work)",
        f"- dataset: {rows} rows x {D} float32 = {r['dataset_bytes'] / 2**20:.1f} MiB, written "
        f"to a temporary folder as Zarr (chunks of {block} rows) and Parquet ({block} rows a "
        "file), read by the workers",
        f"- model: four towers (Linear {D}->{HIDDEN}->{D}) summed, head Linear {D}->{OUT}",
        "- cluster: one embedded LocalCluster, 2 nanny-managed 1-thread worker processes, for "
        "every contender; torch at 1 thread per worker",
        f"- timings: {rounds} interleaved rounds after a warm-up; medians; ratios are medians "
        "of per-round ratios",
        "",
        "| contender | s | rows/s | equals eager on every row | bytes sent by the client |",
        "|---|---:|---:|---|---:|",
    ]
    for k in names:
        sent = r["sent"].get(k)
        sent_s = "" if sent is None else f"{sent} ({100 * sent / r['dataset_bytes']:.2f}%)"
        lines.append(
            f"| {k} | {t[k]:.2f} | {rows / t[k]:,.0f} | {'yes' if r['equal'][k] else 'NO'} | "
            f"{sent_s} |"
        )
    mb, mp = "map_blocks (zarr)", "map_partitions (parquet)"
    mz, mq = "ex.map, zarr read on the client", "ex.map, parquet read on the client"
    lines += [
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        "| outputs equal eager PyTorch on every row | yes | "
        + ("yes" if all(r["equal"].values()) else "NO")
        + " |",
        f"| bytes sent from the client / dataset bytes | <= 1% | map_blocks "
        f"{100 * r['sent'][mb] / r['dataset_bytes']:.2f}%, map_partitions "
        f"{100 * r['sent'][mp] / r['dataset_bytes']:.2f}% (ex.map: "
        f"{100 * r['sent'][mz] / r['dataset_bytes']:.0f}%) |",
        f"| throughput vs hand-written Dask, same cluster | >= 1.0x | map_blocks "
        f"{t[f'ratio: hand-written map_blocks (zarr) / {mb}']:.2f}x, map_partitions "
        f"{t[f'ratio: hand-written map_partitions (parquet) / {mp}']:.2f}x |",
        f"| throughput vs ex.map through the client, same files | >= 1.0x | map_blocks "
        f"{t[f'ratio: {mz} / {mb}']:.2f}x, map_partitions {t[f'ratio: {mq} / {mp}']:.2f}x |",
        f"| a worker SIGKILLed mid-computation | right result | {r['killed']} |",
        "",
        "Throughput ratios are other / ours of the per-round times (above 1: ours is faster).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--block", type=int, default=2_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS, help="report file ('-': none)")
    args = p.parse_args(argv)
    command = "python benchmarks/bench_dask_data.py " + " ".join(argv or sys.argv[1:])
    r = run(args.rows, args.block, args.rounds)
    text = report(r, args.rows, args.block, args.rounds, command.strip())
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
