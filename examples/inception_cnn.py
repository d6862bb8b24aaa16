"""An inception-style CNN, imported by tracing an ordinary ``nn.Module`` with `gx.trace`.

Each inception block has four branches (1x1, 1x1->3x3, 1x1->5x5, pool->1x1) that meet in a
``torch.cat``; the tracer turns every branch into one fused task and folds the ``cat`` into
the next block, so the plan has four-wide levels. Run::

    python examples/inception_cnn.py [OUT_DIR]          # default out/examples

It prints the plan, checks the threaded run against eager PyTorch, and saves
``inception_plan.png`` and ``inception_gantt.png``. As a CLI target::

    python -m graphexec plan examples/inception_cnn.py:model
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import graphexec as gx


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU())


class Inception(nn.Module):
    """Four parallel branches concatenated on channels."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.b1 = _conv(cin, c, 1)
        self.b3 = nn.Sequential(_conv(cin, c, 1), _conv(c, c, 3))
        self.b5 = nn.Sequential(_conv(cin, c // 2, 1), _conv(c // 2, c, 5))
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv(cin, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1)


class InceptionNet(nn.Module):
    """A stem, ``blocks`` inception blocks (a pool after every second one), a linear head."""

    def __init__(self, blocks: int = 3, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = _conv(3, width * 2, 3)
        layers: list[nn.Module] = []
        cin = width * 2
        for i in range(blocks):
            layers.append(Inception(cin, width))
            cin = 4 * width
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


torch.manual_seed(0)
#: CLI target: ``python -m graphexec run examples/inception_cnn.py:model``.
model = InceptionNet().eval()
#: The inputs the CLI uses for ``model`` when no ``--input-shape`` is given.
example_inputs = (torch.randn(8, 3, 32, 32),)


def main(argv: list[str] | None = None) -> int:
    """Trace, plan, run on threads and sequentially, and save the pictures."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "out/examples")
    out.mkdir(parents=True, exist_ok=True)
    graph = gx.trace(model, name="inception")
    plan = gx.plan(graph, example_inputs)  # costs measured on the example batch
    print(plan)
    with torch.no_grad():
        expected = model(*example_inputs)
        with gx.ThreadExecutor() as ex:
            got, trace = ex.run(plan, *example_inputs, profile=True)
            t0 = time.perf_counter()
            ex.run(plan, *example_inputs)
            threads_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model(*example_inputs)
        eager_s = time.perf_counter() - t0
    torch.testing.assert_close(got, expected)
    print(f"\nthreads {threads_s * 1e3:.1f} ms, eager {eager_s * 1e3:.1f} ms: outputs match")
    print(trace.summary())
    plan.draw(out / "inception_plan.png")
    trace.gantt(out / "inception_gantt.png")
    print(f"pictures in {out}/inception_plan.png, inception_gantt.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
