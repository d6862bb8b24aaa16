"""Dataset inference on a local Dask cluster with ``executor.map``: many batches in flight.

A three-branch ensemble classifies a synthetic dataset of batches. ``DaskExecutor.map``
sends the weights to the workers once, keeps a window of batches in flight (progress bar on
stderr) and yields the outputs in input order. One batch is also run with ``profile=True`` to
draw where each task ran (lanes are Dask workers, timestamps come from the workers). Run::

    python examples/dask_dataset.py [OUT_DIR] [--address tcp://host:8786]

Without ``--address`` an embedded ``LocalCluster`` with 2 worker processes is started and
closed at the end. Saves ``dask_plan.png``, ``dask_gantt.png`` and ``dask_trace.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import graphexec as gx


def build_graph() -> gx.Graph:
    """Three MLP experts over one input, averaged."""
    torch.manual_seed(0)
    g = gx.Graph("ensemble")
    x = g.input("x")
    experts = [
        g.node(
            f"expert_{i}", nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 10)), x
        )
        for i in range(3)
    ]
    g.output(g.node("average", gx.mean(dim=0), g.node("stack", gx.stack(dim=0), *experts)))
    return g


def dataset(batches: int = 16, rows: int = 128) -> list[torch.Tensor]:
    """A synthetic dataset: ``batches`` random batches of ``rows`` x 256."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(rows, 256, generator=gen) for _ in range(batches)]


#: CLI inputs for ``build_graph``.
example_inputs = (torch.randn(128, 256),)


def main(argv: list[str] | None = None) -> int:
    """Map the dataset over a Dask cluster, check it, save the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="out/examples")
    parser.add_argument("--address", help="Dask scheduler to join (default: local cluster)")
    parser.add_argument("--batches", type=int, default=16)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    graph = build_graph()
    plan = gx.plan(graph)
    print(plan, end="\n\n")
    data = dataset(args.batches)
    with torch.no_grad():
        expected = [gx.SequentialExecutor().run(plan, b) for b in data]
        kw = {"address": args.address} if args.address else {"n_workers": 2}
        with gx.DaskExecutor(dashboard_address=":0", **kw) as ex:
            t0 = time.perf_counter()
            results = list(ex.map(plan, data))
            seconds = time.perf_counter() - t0
            _, trace = ex.run(plan, data[0], profile=True)
    for got, want in zip(results, expected, strict=True):
        torch.testing.assert_close(got, want)
    print(f"{len(data)} batches on Dask in {seconds:.2f} s ({len(data) / seconds:.1f} batches/s); "
          "all match sequential")  # fmt: skip
    print(trace.summary())
    plan.draw(out / "dask_plan.png")
    trace.gantt(out / "dask_gantt.png")
    trace.to_chrome(out / "dask_trace.json")
    print(f"pictures in {out}/dask_*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
