"""The demo's models (`graphexec.demo` runs them): each built to show one thing, none told
what it will measure.

* `CatalogSearch`: two top-k searches, each on one core whatever torch's thread count:
  overlapping them can pay on a CPU.
* `DemoNet`: three towers of wide layers, each matrix product already on every core:
  overlapping them usually does not pay.
* `TaskHeads`: 128 small heads of one shape on a shared trunk, each layer call mostly Python
  and dispatch: running the heads as one batched call (horizontal fusion) can pay.

`demo_graph` is `DemoNet` traced, the CLI's and the docs' built-in target.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .fx_import import trace as fx_trace
from .graph import Graph

__all__ = ["Catalog", "CatalogSearch", "DemoNet", "TaskHeads", "demo_graph"]


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DemoNet(nn.Module):
    """A multi-branch model of wide layers: a shared stem, three towers, a head.

    ::

        x -> stem -> tower_a (deep)   -\
                  -> tower_b (wide)   --> cat -> head
                  -> tower_c (small)  -/
    """

    def __init__(self, width: int = 512):
        super().__init__()
        self.stem = _mlp(width, width)
        self.tower_a = _mlp(width, 1024, 1024, 1024, 256)
        self.tower_b = _mlp(width, 2048, 256)
        self.tower_c = _mlp(width, 512, 256)
        self.head = nn.Linear(3 * 256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.cat([self.tower_a(h), self.tower_b(h), self.tower_c(h)], dim=1))


class Catalog(nn.Module):
    """Item embeddings of one catalog; ``forward(q)`` scores every item, keeps the top ``k``."""

    def __init__(self, items: int, dim: int, k: int = 100):
        super().__init__()
        self.items = nn.Parameter(torch.randn(items, dim) / dim**0.5)
        self.k = k

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, index = torch.topk(q @ self.items.T, self.k, dim=-1)
        return scores, index


class CatalogSearch(nn.Module):
    """One query embedded once, searched in two catalogs (``x``: queries, features).

    ::

        x -> query -> products (score 200k items, top 100) -\
                   -> videos   (score 200k items, top 100) --> cat -> (scores, ids)
    """

    def __init__(self, dim: int = 32, items: int = 200_000, k: int = 100):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.products = Catalog(items, dim, k)
        self.videos = Catalog(items, dim, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query(x)
        (ps, pi), (vs, vi) = self.products(q), self.videos(q)
        return torch.cat([ps, vs], dim=-1), torch.cat([pi, vi], dim=-1)


class TaskHeads(nn.Module):
    """One shared trunk and ``tasks`` small heads of one shape, one score each (``x``: rows
    of features): the shape of multi-label tagging or multi-task scoring. The demo traces each
    head whole (``leaves=(nn.Sequential,)``), so a plan can batch all of them into one call.

    ::

        x -> trunk -> head 0   (Linear 64->32, ReLU, Linear 32->1) -\
                   -> head 1                                       --> cat -> scores
                   -> ...                                          -/
                   -> head 127
    """

    def __init__(self, dim: int = 64, tasks: int = 128, hidden: int = 32):
        super().__init__()
        self.trunk = nn.Linear(dim, dim)
        self.heads = nn.ModuleList(_mlp(dim, hidden, 1) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.trunk(x))
        return torch.cat([head(h) for head in self.heads], dim=1)


def demo_graph() -> Graph:
    """The demo's wide multi-branch model (`DemoNet`) traced into a graph.

    Examples
    --------
    >>> g = demo_graph()
    >>> g.inputs
    ('x',)
    """
    torch.manual_seed(0)
    return fx_trace(DemoNet().eval(), name="demo")
