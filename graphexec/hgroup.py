"""The fused module of horizontal fusion: ``K`` identical modules as one batched call.

`graphexec.hfuse` finds the groups and rewrites the graph; this module runs them.

Why the weights are stacked at every call
-----------------------------------------
`HorizontalGroup` runs ``nn.Linear`` members as one GEMM (shared input) or one ``baddbmm``
(stacked inputs), and anything else as ``torch.func.functional_call`` of the first member
under ``torch.func.vmap``; either way each parameter is concatenated or stacked from the
*live* members (``torch.cat([m.weight for m in members])``) inside the call. The stacked copy
is part of the autograd graph, so ``backward`` reaches each original parameter, and an
optimizer step on the originals is seen by the next call. A copy stacked once
(``stack_module_state``) would go stale after the first step. Stacking costs one copy of the
group's parameters per call: cheap for the small modules this pays for.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from .merge import MergeOp, add, mean, stack

__all__ = ["HorizontalGroup", "member", "restack"]


class HorizontalGroup(nn.Module):
    """Run ``K`` structurally identical modules as one batched call over live weights.

    Parameters
    ----------
    members : sequence of nn.Module
        Registered as submodules (``members.<i>``), so ``parameters()`` sees them.
    shared : sequence of bool
        For each argument position: True when every member reads the same value (passed
        once, broadcast), False when each member has its own (passed ``K`` times, stacked).

    Returns (when called) a tensor with the members' outputs stacked on dim 0 (possibly a
    strided view: see `member`), or a list of the members' outputs when a member returns
    something other than one tensor.

    ``nn.Linear`` members, and ``nn.Sequential`` of Linear and elementwise layers, take a
    direct path: a Linear on a shared input is one GEMM against the members' weights
    concatenated (``K*out x in``), on stacked inputs one ``baddbmm``. Anything else runs
    ``torch.func.functional_call`` of the first member under ``vmap``.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> mods = [nn.Linear(3, 2) for _ in range(4)]
    >>> grp = HorizontalGroup(mods, shared=[True])
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(grp(x)[2], mods[2](x), atol=1e-6)
    True
    >>> grp = HorizontalGroup([nn.Sequential(nn.Linear(3, 2), nn.Tanh()) for _ in range(4)], [True])
    >>> grp(x).shape
    torch.Size([4, 5, 2])
    """

    def __init__(self, members: Sequence[nn.Module], shared: Sequence[bool]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.shared = tuple(shared)
        self._names = [n for n, _ in members[0].named_parameters()]
        self._paths = {n: _path(n) for n in self._names}
        self._direct = _direct_layers(members[0]) if len(self.shared) == 1 else None

    def _live(self, name: str) -> list[torch.Tensor]:
        """Parameter ``name`` of every member, read now (an optimizer step, a reassigned
        parameter or a replaced submodule is seen). Walked through ``_modules`` by the path
        split once: ``get_submodule`` took about half of a fused call of 128 two-layer heads
        (4 parameters x 128 members; 2026-12, 2-core CPU)."""
        owners, leaf = self._paths[name]
        found = []
        for m in self.members:
            for part in owners:
                m = m._modules[part]
            found.append(m._parameters[leaf])
        return found

    def forward(self, *xs: Any) -> Any:
        if self._direct is not None:
            return self._forward_direct(xs)
        k = len(self.members)
        args, in_dims, pos = [], [], 0
        for is_shared in self.shared:
            if is_shared:
                args.append(xs[pos])
                in_dims.append(None)
                pos += 1
            else:
                args.append(torch.stack(xs[pos : pos + k]))
                in_dims.append(0)
                pos += k
        params = {n: torch.stack(self._live(n)) for n in self._names}
        with _VMAP_LOCK:
            template = self.__dict__.get("_skeleton")
            if template is None:  # a private copy, not registered: parameters() skip it
                template = copy.deepcopy(self.members[0])
                object.__setattr__(self, "_skeleton", template)

            def call(p: dict[str, torch.Tensor], *a: Any) -> Any:
                return functional_call(template, p, a)

            out = vmap(call, in_dims=(0, *in_dims))(params, *args)
        if isinstance(out, torch.Tensor):
            return out
        return [torch.utils._pytree.tree_map(lambda t, i=i: t[i], out) for i in range(k)]

    def _forward_direct(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Linear layers as one GEMM / ``baddbmm``, elementwise layers on the stacked tensor."""
        k = len(self.members)
        h, stacked = (xs[0], False) if self.shared[0] else (torch.stack(xs), True)
        for prefix, layer in self._direct:
            if type(layer) is not nn.Linear:
                h = layer(h)  # elementwise: the same on the stack as on each member
                continue
            weights = self._live(prefix + "weight")
            biases = self._live(prefix + "bias") if layer.bias is not None else None
            out_features = weights[0].shape[0]
            if not stacked:  # one GEMM: [..., in] x [in, K*out] -> [..., K, out] -> [K, ..., out]
                y = F.linear(h, torch.cat(weights), None if biases is None else torch.cat(biases))
                y = y.unflatten(-1, (k, out_features))
                h = y.movedim(y.dim() - 2, 0)  # positive dims: the ONNX exporter needs them
                stacked = True
                continue
            flat = h.reshape(k, -1, h.shape[-1])
            w = torch.stack(weights).transpose(1, 2)  # [K, in, out]
            if biases is None:
                y = torch.bmm(flat, w)
            else:
                y = torch.baddbmm(torch.stack(biases).unsqueeze(1), flat, w)
            h = y.reshape(*h.shape[:-1], out_features)
        return h

    def extra_repr(self) -> str:
        return f"{len(self.members)} x {type(self.members[0]).__name__}, shared={self.shared}"


class member(MergeOp):  # noqa: N801 - reads like gx.getitem
    """Member ``i`` of a `HorizontalGroup`'s output, contiguous like the member's own output."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, x: Any) -> Any:
        y = x[self.index]
        return y.contiguous() if isinstance(y, torch.Tensor) else y


class restack(MergeOp):  # noqa: N801
    """What a merge of *all* members of a group computes, read from the group's output.

    ``how`` is ``"stack"`` (``torch.stack(members, dim)``), ``"sum"`` or ``"mean"``; the
    rewrite replaces such a merge so no member is ever split out.
    """

    def __init__(self, how: str, dim: int = 0):
        self.how, self.dim = how, dim

    def __call__(self, x: Any) -> Any:
        if isinstance(x, list):  # members returned something else than one tensor each
            return (
                _MERGES[self.how](self.dim)(*x) if self.how == "stack" else _MERGES[self.how]()(*x)
            )
        if self.how == "sum":
            return x.sum(0)
        if self.how == "mean":
            return x.mean(0)
        return x.movedim(0, self.dim % x.dim()).contiguous()


_MERGES = {"stack": stack, "sum": add, "mean": mean}


#: ``functional_call`` puts the batched parameters into the module it is given for the length
#: of the call, so two threads calling one group would see each other's (torch 2.13: an
#: internal assert in functorch's batching rules with 8 threads). The vmap path runs on a
#: private copy of the first member under this lock; the direct path needs neither.
_VMAP_LOCK = threading.Lock()

#: Parameter-free layers that act elementwise: applied to the stacked tensor as they are.
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Identity)


def _path(name: str) -> tuple[tuple[str, ...], str]:
    """``"net.0.weight"`` -> ``(("net", "0"), "weight")``: the submodules to walk, the leaf."""
    owner, _, leaf = name.rpartition(".")
    return (tuple(owner.split(".")) if owner else ()), leaf


def _direct_layers(template: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``(parameter prefix, layer)`` of a Linear or a Sequential of Linear and elementwise
    layers (the MLP branches fusion meets most), or None: run it under ``vmap``."""
    if type(template) is nn.Linear:
        return [("", template)]
    if type(template) is not nn.Sequential:
        return None
    layers = [(f"{name}.", layer) for name, layer in template.named_children()]
    if not any(type(layer) is nn.Linear for _, layer in layers):
        return None
    if all(type(layer) is nn.Linear or type(layer) in _ELEMENTWISE for _, layer in layers):
        return layers
    return None
