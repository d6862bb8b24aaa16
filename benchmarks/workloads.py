"""The benchmark workloads, each built twice over the same weights: a `gx.Graph` and eager.

Every workload is a `Workload`: the graph (one node per layer, so the planner's chain fusion
and levels do real work), an eager ``nn.Module`` sharing the very same layer objects (so the
two cannot drift apart), a TorchScript-able twin that runs its branches with
``torch.jit.fork``/``wait`` (again the same layers), and example inputs.

The five workloads of issue 5:

a. ``wide``: 8 branches ``Linear(512,2048)-ReLU-Linear(2048,512)`` on ``[64,512]``, stacked and
   averaged, then ``Linear(512,10)``.
b. ``ensemble``: 4 MLPs of 3 x ``Linear(1024,1024)`` + ReLU on ``[256,1024]``, stacked, averaged.
c. ``inception``: three GoogLeNet inception blocks (3a, 3b, 4a channel counts) on
   ``[8,192,28,28]``.
d. ``chain``: 64 x ``Linear(256,256)+ReLU`` on ``[32,256]`` (no parallelism at all).
e. ``tiny``: 256 ``Linear(16,16)`` branches on ``[4,16]``, stacked and summed.

And two architectures written as plain modules and imported with `gx.trace` (what a user with
an existing model does):

f. ``cnn``: a multi-branch CNN (conv-BN-ReLU stem, two four-branch blocks, pooling, classifier)
   on ``[16,3,64,64]``.
g. ``encoder``: a 2-layer post-norm transformer encoder (d 256, 4 heads, ff 1024) whose q, k
   and v projections are separate branches, on ``[4,128,256]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import graphexec as gx

__all__ = ["Workload", "Branches", "ForkBranches", "WORKLOADS", "build", "build_all"]


class Branches(nn.Module):
    """Eager reference: run every branch on ``x``, merge, then an optional head."""

    def __init__(self, branches: list[nn.Module], merge: str, head: nn.Module | None = None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.merge = merge
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_merge([b(x) for b in self.branches], self.merge))


class ForkBranches(nn.Module):
    """The TorchScript peer: the same branches, started with ``torch.jit.fork``."""

    def __init__(self, eager: Branches):
        super().__init__()
        self.branches = eager.branches
        self.merge = eager.merge
        self.head = eager.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        futures = [torch.jit.fork(b, x) for b in self.branches]
        outs = [torch.jit.wait(f) for f in futures]
        return self.head(_merge(outs, self.merge))


def _merge(outs: list[torch.Tensor], how: str) -> torch.Tensor:
    if how == "cat":
        return torch.cat(outs, 1)
    if how == "mean":
        return torch.stack(outs, 1).mean(1)
    return torch.stack(outs, 1).sum(1)


@dataclass
class Workload:
    """One benchmark case: graph, eager module and TorchScript twin over shared weights."""

    key: str
    title: str
    graph: gx.Graph
    eager: nn.Module
    fork: nn.Module | None  # None: no TorchScript twin (the model zoo's real models)
    inputs: tuple[torch.Tensor, ...]


def _add_seq(g: gx.Graph, prefix: str, seq: nn.Module, x: gx.Ref) -> gx.Ref:
    """One graph node per child of ``seq`` (a plain module becomes one node)."""
    children = list(seq.children()) if isinstance(seq, nn.Sequential) else [seq]
    for i, layer in enumerate(children):
        x = g.node(f"{prefix}.{i}", layer, x)
    return x


def _add_branches(g: gx.Graph, prefix: str, block: Branches, x: gx.Ref) -> gx.Ref:
    outs = [_add_seq(g, f"{prefix}.b{i}", b, x) for i, b in enumerate(block.branches)]
    if block.merge == "cat":
        return g.node(f"{prefix}.cat", gx.cat(1), *outs)
    s = g.node(f"{prefix}.stack", gx.stack(1), *outs)
    y = g.node(f"{prefix}.{block.merge}", gx.mean(1) if block.merge == "mean" else _Sum1(), s)
    if not isinstance(block.head, nn.Identity):
        y = _add_seq(g, f"{prefix}.head", block.head, y)
    return y


class _Sum1(gx.MergeOp):
    """``x.sum(1)`` (a cheap merge op)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)


def _mlp(sizes: list[int], relu_last: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if relu_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _branchy(
    key: str, title: str, block: Branches, x: torch.Tensor, fork: nn.Module | None = None
) -> Workload:
    g = gx.Graph(key)
    g.output(_add_branches(g, key, block, g.input("x")))
    return Workload(key, title, g, block, fork or ForkBranches(block), (x,))


def wide() -> Workload:
    """(a) 8 branches Linear(512,2048)-ReLU-Linear(2048,512), stacked+mean, Linear(512,10)."""
    block = Branches([_mlp([512, 2048, 512], False) for _ in range(8)], "mean", nn.Linear(512, 10))
    return _branchy("wide", "(a) 8-branch wide MLP [64,512]", block, torch.randn(64, 512))


def ensemble() -> Workload:
    """(b) 4 MLPs of 3 x Linear(1024,1024)+ReLU on [256,1024], stacked+mean."""
    block = Branches([_mlp([1024] * 4) for _ in range(4)], "mean")
    return _branchy("ensemble", "(b) ensemble of 4 MLPs [256,1024]", block, torch.randn(256, 1024))


def _conv(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU()]


def _inception(cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> Branches:
    return Branches(
        [
            nn.Sequential(*_conv(cin, c1, 1)),
            nn.Sequential(*_conv(cin, c3r, 1), *_conv(c3r, c3, 3)),
            nn.Sequential(*_conv(cin, c5r, 1), *_conv(c5r, c5, 5)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), *_conv(cin, cp, 1)),
        ],
        "cat",
    )


def inception() -> Workload:
    """(c) GoogLeNet inception blocks 3a, 3b, 4a (no pooling between) on [8,192,28,28]."""
    blocks = [
        _inception(192, 64, 96, 128, 16, 32, 32),
        _inception(256, 128, 128, 192, 32, 96, 64),
        _inception(480, 192, 96, 208, 16, 48, 64),
    ]
    eager = nn.Sequential(*blocks)
    fork = nn.Sequential(*[ForkBranches(b) for b in blocks])
    g = gx.Graph("inception")
    y = g.input("x")
    for i, b in enumerate(blocks):
        y = _add_branches(g, f"inc{i}", b, y)
    g.output(y)
    x = torch.randn(8, 192, 28, 28)
    return Workload("inception", "(c) 3 inception blocks [8,192,28,28]", g, eager, fork, (x,))


def chain() -> Workload:
    """(d) 64 x Linear(256,256)+ReLU on [32,256]: no parallelism."""
    seq = _mlp([256] * 65)
    g = gx.Graph("chain")
    g.output(_add_seq(g, "chain", seq, g.input("x")))
    return Workload("chain", "(d) 64-layer chain [32,256]", g, seq, seq, (torch.randn(32, 256),))


def tiny() -> Workload:
    """(e) 256 Linear(16,16) branches on [4,16], stacked+sum."""
    block = Branches([nn.Linear(16, 16) for _ in range(256)], "sum")
    return _branchy("tiny", "(e) 256 tiny branches [4,16]", block, torch.randn(4, 16))


# -- traced architectures: written as plain nn.Modules, imported with gx.trace ----------------
def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class MultiBranchCNN(nn.Module):
    """A small multi-branch CNN: stem, two 4-branch blocks (conv-BN-ReLU), pooling, classifier."""

    def __init__(self, width: int = 64, classes: int = 100):
        super().__init__()
        self.stem = _conv_bn(3, width, 3)
        self.blocks = nn.ModuleList(
            Branches(
                [  # out channels: w/4 + w/2 + w/8 + w/8 = w
                    _conv_bn(width, width // 4, 1),
                    nn.Sequential(
                        _conv_bn(width, width // 4, 1), _conv_bn(width // 4, width // 2, 3)
                    ),
                    nn.Sequential(
                        _conv_bn(width, width // 8, 1), _conv_bn(width // 8, width // 8, 5)
                    ),
                    nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(width, width // 8, 1)),
                ],
                "cat",
            )
            for _ in range(2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class ForkCNN(nn.Module):
    """TorchScript twin of `MultiBranchCNN`: each block's branches forked."""

    def __init__(self, cnn: MultiBranchCNN):
        super().__init__()
        self.stem, self.pool, self.fc = cnn.stem, cnn.pool, cnn.fc
        self.blocks = nn.ModuleList(ForkBranches(b) for b in cnn.blocks)

    forward = MultiBranchCNN.forward


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer with q, k, v as separate projections (branches)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        return self.out(a.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attend(self.q(x), self.k(x), self.v(x)))
        return self.norm2(x + self.ff(x))


class Encoder(nn.Module):
    """A small transformer encoder: ``layers`` x `EncoderLayer`."""

    def __init__(self, d: int = 256, heads: int = 4, ff: int = 1024, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ForkEncoderLayer(nn.Module):
    """TorchScript twin of `EncoderLayer`: the q, k, v projections forked."""

    def __init__(self, layer: EncoderLayer):
        super().__init__()
        self.heads = layer.heads
        self.q, self.k, self.v, self.out = layer.q, layer.k, layer.v, layer.out
        self.norm1, self.norm2, self.ff = layer.norm1, layer.norm2, layer.ff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fq, fk = torch.jit.fork(self.q, x), torch.jit.fork(self.k, x)
        v = self.v(x)
        q, k = torch.jit.wait(fq), torch.jit.wait(fk)
        b, n, d = q.shape
        h = self.heads
        a = F.scaled_dot_product_attention(
            q.view(b, n, h, d // h).transpose(1, 2),
            k.view(b, n, h, d // h).transpose(1, 2),
            v.view(b, n, h, d // h).transpose(1, 2),
        )
        x = self.norm1(x + self.out(a.transpose(1, 2).reshape(b, n, d)))
        return self.norm2(x + self.ff(x))


def cnn() -> Workload:
    """(f) traced multi-branch CNN on [16,3,64,64] (stem, 2 four-branch blocks, classifier)."""
    model = MultiBranchCNN().eval()
    x = torch.randn(16, 3, 64, 64)
    g = gx.trace(model, name="cnn")
    return Workload(
        "cnn", "(f) traced multi-branch CNN [16,3,64,64]", g, model, ForkCNN(model), (x,)
    )


def encoder() -> Workload:
    """(g) traced 2-layer transformer encoder (d 256, 4 heads, ff 1024) on [4,128,256]."""
    model = Encoder().eval()
    fork = nn.Sequential(*[ForkEncoderLayer(layer) for layer in model.layers])
    g = gx.trace(model, name="encoder")
    x = torch.randn(4, 128, 256)
    return Workload("encoder", "(g) traced transformer encoder [4,128,256]", g, model, fork, (x,))


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "wide": wide,
    "ensemble": ensemble,
    "inception": inception,
    "chain": chain,
    "tiny": tiny,
    "cnn": cnn,
    "encoder": encoder,
}


def build(key: str, seed: int = 0) -> Workload:
    """Build one workload with a fixed seed, modules in eval mode."""
    torch.manual_seed(seed)
    w = WORKLOADS[key]()
    w.eager.eval()
    w.fork.eval()
    return w


def build_all(keys: list[str] | None = None) -> list[Workload]:
    """Build the named workloads (all by default) in the table's order."""
    return [build(k) for k in (keys or list(WORKLOADS))]
