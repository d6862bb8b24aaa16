"""A two-tower ensemble declared with the graph API: the README's first example, end to end.

Two MLP towers read the same input; their outputs are stacked, averaged and fed to a head::

    x -> tower_a -\
                   stack -> mean -> head
    x -> tower_b -/

Run::

    python examples/two_towers.py [OUT_DIR]          # default out/examples

It prints the plan, runs it sequentially and on threads (both schedules), checks the results
agree, prints the trace summary and saves ``two_towers_plan.png``, ``two_towers_gantt.png``,
``two_towers_compare.png`` and ``two_towers_trace.json``. As a CLI target::

    python -m graphexec run examples/two_towers.py:build_graph --input-shape 64,512
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

import graphexec as gx
from graphexec.viz import compare


def tower(width: int = 512, hidden: int = 2048) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))


def build_graph() -> gx.Graph:
    """The two-tower ensemble as a graph."""
    torch.manual_seed(0)
    g = gx.Graph("two_towers")
    x = g.input("x")
    a = g.node("tower_a", tower(), x)
    b = g.node("tower_b", tower(), x)
    s = g.node("merge", gx.stack(dim=1), a, b)
    g.output(g.node("head", nn.Linear(512, 10), g.node("pool", gx.mean(dim=1), s)))
    return g


#: CLI inputs for ``build_graph`` when no ``--input-shape`` is given.
example_inputs = (torch.randn(64, 512),)


def main(argv: list[str] | None = None) -> int:
    """Plan, run on three executors, compare, and save the pictures."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "out/examples")
    graph = build_graph()
    plan = gx.plan(graph, example_inputs)
    print(plan, end="\n\n")
    traces = {}
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(plan, *example_inputs)
        for label, ex in [
            ("sequential", gx.SequentialExecutor()),
            ("threads (dataflow)", gx.ThreadExecutor()),
            ("threads (levels)", gx.ThreadExecutor(schedule="levels")),
        ]:
            with ex:
                ex.run(plan, *example_inputs)  # warm-up
                got, traces[label] = ex.run(plan, *example_inputs, profile=True)
            torch.testing.assert_close(got, expected)
    print(traces["threads (dataflow)"].summary())
    plan.draw(out / "two_towers_plan.png")
    traces["threads (dataflow)"].gantt(out / "two_towers_gantt.png")
    traces["threads (dataflow)"].to_chrome(out / "two_towers_trace.json")
    compare(traces, out / "two_towers_compare.png")
    print(f"\nall three executors agree; pictures in {out}/two_towers_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
