"""A two-encoder model (image + text) whose encoders run side by side, with a fusion head.

The image encoder is a small CNN, the text encoder an embedding and a transformer layer; the
two never meet until the fusion head, so the plan has two long parallel branches::

    image -> conv stem -> conv blocks -> pool -\
                                                cat -> fusion MLP -> logits
    tokens -> embedding -> transformer layer --/

Built with the graph API (``g.node``), not traced: each encoder stage is a node, and the
planner fuses each encoder into one task. Run::

    python examples/image_text.py [OUT_DIR]          # default out/examples

It prints the plan, runs on threads, checks against sequential, and saves
``image_text_plan.png``, ``image_text_plan.svg`` and ``image_text_gantt.png``. As a CLI target
(two inputs, so give two shapes or use ``example_inputs``)::

    python -m graphexec viz examples/image_text.py:build_graph
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

import graphexec as gx

VOCAB, DIM = 1000, 128


class MeanTokens(nn.Module):
    """(batch, tokens, dim) -> (batch, dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def build_graph() -> gx.Graph:
    """Image and text encoders as parallel branches, fused by a small MLP."""
    torch.manual_seed(0)
    g = gx.Graph("image_text")
    image, tokens = g.input("image"), g.input("tokens")
    h = g.node("img_stem", nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()), image)
    h = g.node("img_block1", nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()), h)
    h = g.node("img_block2", nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()), h)
    img = g.node("img_pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(64, DIM)), h)  # fmt: skip
    t = g.node("txt_embed", nn.Embedding(VOCAB, DIM), tokens)
    layer = nn.TransformerEncoderLayer(DIM, nhead=4, dim_feedforward=4 * DIM, batch_first=True)
    t = g.node("txt_encoder", layer.eval(), t)
    txt = g.node("txt_pool", MeanTokens(), t)
    both = g.node("fuse", gx.cat(dim=1), img, txt)
    head = nn.Sequential(nn.Linear(2 * DIM, DIM), nn.ReLU(), nn.Linear(DIM, 10))
    g.output(g.node("head", head, both))
    return g


#: CLI inputs for ``build_graph``: an image batch and a token batch.
example_inputs = (torch.randn(16, 3, 32, 32), torch.randint(0, VOCAB, (16, 64)))


def main(argv: list[str] | None = None) -> int:
    """Plan (costs measured), run on threads, check, save the pictures."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "out/examples")
    graph = build_graph()
    with torch.no_grad():
        plan = gx.plan(graph, example_inputs)
        print(plan, end="\n\n")
        expected = gx.SequentialExecutor().run(plan, *example_inputs)
        with gx.ThreadExecutor() as ex:
            ex.run(plan, *example_inputs)  # warm-up
            got, trace = ex.run(plan, *example_inputs, profile=True)
    torch.testing.assert_close(got, expected)
    print(trace.summary())
    plan.draw(out / "image_text_plan.png")
    plan.draw(out / "image_text_plan.svg")
    trace.gantt(out / "image_text_gantt.png")
    print(f"\nthreads agree with sequential; pictures in {out}/image_text_*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
