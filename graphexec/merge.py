"""Merge ops: how branch outputs are stacked, concatenated or summed into downstream nodes.

A merge op is a small picklable callable marked ``cheap``: the planner never dispatches one
alone (it runs inline, or inside its consumer's task), and it is never shipped on its own to a
remote worker. Any callable works as a merge too; these just say so and print well.

Examples
--------
>>> import torch, graphexec as gx
>>> a, b = torch.ones(2, 3), torch.zeros(2, 3)
>>> gx.stack(dim=1)(a, b).shape
torch.Size([2, 2, 3])
>>> gx.cat(dim=1)(a, b).shape
torch.Size([2, 6])
>>> gx.add()(a, a, a)[0, 0].item()
3.0
>>> gx.sum(dim=1)(a).tolist()
[3.0, 3.0]
>>> gx.mean(dim=1)(gx.stack(dim=1)(a, b))[0, 0].item()
0.5
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch

__all__ = ["MergeOp", "stack", "cat", "add", "sum", "mean", "identity", "tuple_", "getitem"]


class MergeOp:
    """Base of the merge ops: cheap (never worth a dispatch of its own), picklable, printable."""

    cheap = True

    def __call__(self, *xs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__.rstrip('_')}({args})"

    __repr__ = describe

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class stack(MergeOp):  # noqa: N801 - reads as the torch function it wraps
    """``torch.stack(inputs, dim)``: branch outputs of one shape become one tensor."""

    def __init__(self, dim: int = 0):
        self.dim = dim

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.stack(xs, self.dim)


class cat(MergeOp):  # noqa: N801
    """``torch.cat(inputs, dim)``: e.g. inception branches joined along channels."""

    def __init__(self, dim: int = 0):
        self.dim = dim

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)


class add(MergeOp):  # noqa: N801
    """Elementwise sum of all inputs (residual joins, ensembles); with one input and ``dim``,
    ``x.sum(dim)`` (as `mean`)."""

    def __init__(self, dim: int | None = None):
        self.dim = dim

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and self.dim is not None:
            return xs[0].sum(self.dim)
        return functools.reduce(operator.add, xs)


sum = add  # noqa: A001 - the public name gx.sum() reads better than gx.add() for many inputs


class mean(MergeOp):  # noqa: N801
    """With one input, ``x.mean(dim)``; with several, their elementwise mean."""

    def __init__(self, dim: int | None = None):
        self.dim = dim

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1:
            x = xs[0]
            return x.mean() if self.dim is None else x.mean(self.dim)
        return functools.reduce(operator.add, xs) / len(xs)


class identity(MergeOp):  # noqa: N801
    """Return the single input unchanged."""

    def __call__(self, x: Any) -> Any:
        return x


class tuple_(MergeOp):  # noqa: N801
    """Gather inputs into a tuple (a node can then be indexed: ``ref[i]``)."""

    def __call__(self, *xs: Any) -> tuple[Any, ...]:
        return xs


class getitem(MergeOp):  # noqa: N801
    """``x[index]``."""

    def __init__(self, index: Any):
        self.index = index

    def __call__(self, x: Any) -> Any:
        return x[self.index]


def is_cheap(fn: Any) -> bool:
    """True for merge ops and callables that declare themselves ``cheap``."""
    return bool(getattr(fn, "cheap", False))
