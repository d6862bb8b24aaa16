"""Horizontal fusion: same-level nodes with identical modules run as one batched call.

What it decides
---------------
Two nodes are fused when all of these hold:

* they are at the same depth of the node DAG (``networkx.topological_generations``), so no
  path joins them and running them together cannot reorder anything;
* their ``fn`` are ``nn.Module``\\ s of identical structure: same types and ``extra_repr``
  (hyper-parameters) for every submodule, same parameter names, shapes, dtypes and
  ``requires_grad``, same ``training`` flag; no buffers (a batch-norm's running statistics
  would be updated per member), no dropout (randomness under ``vmap`` differs from the loop),
  no hooks; no ``kwargs``, ``mutates`` or ``after``;
* their inputs agree: the same references (the usual fan-out: every branch reads ``x``), or
  with ``example_inputs`` given, tensors of the same shape and dtype.

A group of ``min_group`` or more becomes one node (``hfuse:<first member>``) whose fn is a
`HorizontalGroup` (its output: the members' outputs stacked on dim 0). A merge of *all* the
members (``gx.stack``, ``gx.add``/``gx.sum``, ``gx.mean``, the usual join of branches) becomes
a `restack` of the group's output, so no member is split out and stacked again; a member read
anywhere else keeps its name as a `member` node (``x[i]``), so every downstream reference and
every graph output still resolves.

Why the weights are stacked at every call
-----------------------------------------
`HorizontalGroup` runs ``nn.Linear`` members as one GEMM (shared input) or one ``baddbmm``
(stacked inputs), and anything else as ``torch.func.functional_call`` of the first member
under ``torch.func.vmap``; either way each parameter is concatenated or stacked from the
*live* members (``torch.cat([m.weight for m in members])``) inside the call. The stacked copy
is part of the autograd graph, so ``backward`` reaches each original parameter, and an
optimizer step on the originals is seen by the next call. A copy stacked once
(``stack_module_state``) would go stale after the first step. Stacking costs one copy of the
group's parameters per call: cheap for the small modules this pays for, and the reason
fusion of large GEMMs is left to the cost model.

When it pays (measured, see ``docs/performance.md``): groups of many small members, where a
call is dominated by per-module Python and dispatch overhead (256 ``Linear(16,16)`` on
``[4,16]``, stacked and summed: 1.36 ms eager, 0.11 ms fused). For large members one batched
GEMM on one thread does the same work as the loop, so fusion is neutral and takes away
branch concurrency; `should_fuse` holds the rule, and `graphexec.plan` applies it to measured
costs by default (``hfuse="auto"``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import networkx as nx
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from .graph import Graph, Node, Ref
from .interpret import program_values
from .merge import MergeOp, add, mean, stack
from .units import format_seconds

__all__ = [
    "HorizontalGroup",
    "has_candidates",
    "horizontal_fuse",
    "member",
    "module_signature",
    "restack",
    "should_fuse",
]

#: Fuse a group when the members' measured mean cost is below this (seconds) ...
FUSE_MEMBER_BELOW = 200e-6


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
        self._direct = _direct_layers(members[0]) if len(self.shared) == 1 else None

    def _live(self, name: str) -> list[torch.Tensor]:
        """Parameter ``name`` of every member, read now (an optimizer step or a reassigned
        parameter is seen)."""
        owner, _, leaf = name.rpartition(".")
        return [(m.get_submodule(owner) if owner else m)._parameters[leaf] for m in self.members]

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


def module_signature(module: nn.Module) -> tuple | None:
    """A hashable description of a module's structure, or None if it must not be fused.

    Two modules with equal signatures compute the same function of (parameters, inputs).

    Examples
    --------
    >>> import torch.nn as nn
    >>> module_signature(nn.Linear(4, 2)) == module_signature(nn.Linear(4, 2))
    True
    >>> module_signature(nn.Linear(4, 2)) == module_signature(nn.Linear(4, 3))
    False
    >>> module_signature(nn.BatchNorm1d(4)) is None  # buffers: running stats
    True
    """
    if next(module.buffers(), None) is not None:
        return None
    parts: list[tuple] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or m._forward_hooks or m._forward_pre_hooks:
            return None
        parts.append((name, type(m), m.extra_repr(), m.training))
    params = tuple(
        (n, tuple(p.shape), p.dtype, p.device, p.requires_grad)
        for n, p in module.named_parameters()
    )
    if not params:
        return None  # nothing to stack: parameter-free modules are cheap anyway
    return tuple(parts), params


def should_fuse(member_costs: Sequence[float], member_below: float = FUSE_MEMBER_BELOW) -> bool:
    """The recommended cost-model rule: fuse when the members are small.

    Parameters
    ----------
    member_costs : sequence of float
        Measured (or estimated) seconds of each member.
    member_below : float
        Fuse when the mean member cost is below this. Small members are dominated by per-call
        overhead, which fusion removes; large ones are GEMM-bound, where fusion gains nothing
        and takes away branch concurrency.

    Examples
    --------
    >>> should_fuse([10e-6] * 256), should_fuse([5e-3] * 8)
    (True, False)
    """
    return bool(member_costs) and sum(member_costs) / len(member_costs) < member_below


def horizontal_fuse(
    graph: Graph,
    example_inputs: Sequence[Any] | None = None,
    min_group: int = 2,
    costs: dict[str, float] | None = None,
    notes: list[str] | None = None,
) -> Graph:
    """Return a new graph where groups of identical same-level modules run as one call.

    Parameters
    ----------
    graph : Graph
        Left unchanged; the new graph shares its module objects (and so its parameters).
    example_inputs : sequence, optional
        Positional graph inputs. When given, the graph is run once (``no_grad``) to learn each
        value's shape, and members reading different tensors of one shape are fused too
        (their inputs stacked). Without it only members reading the same references fuse.
    min_group : int
        The smallest group worth fusing.
    costs : dict, optional
        Node name -> seconds (e.g. ``plan.node_costs``). When given, a group is fused only if
        `should_fuse` says so.
    notes : list, optional
        Filled with one line per group found: fused or not, and why.

    Returns
    -------
    Graph
        Named ``graph.name``; fused nodes are ``hfuse:<first member>``; a merge of all members
        reads the group through a `restack`, and a member read elsewhere keeps its name as a
        `member` of the group, so references keep working.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("fan")
    >>> x = g.input("x")
    >>> g.output(g.node("sum", gx.add(), *[g.node(f"b{i}", nn.Linear(4, 4), x) for i in range(3)]))
    >>> f = horizontal_fuse(g)
    >>> [n for n in f.nodes], f.nodes["sum"].fn
    (['x', 'hfuse:b0', 'sum'], restack(how='sum', dim=0))
    >>> x0 = torch.randn(2, 4)
    >>> torch.allclose(gx.SequentialExecutor().run(gx.plan(f), x0),
    ...                gx.SequentialExecutor().run(gx.plan(g), x0), atol=1e-6)
    True
    """
    graph.validate()
    shapes = _value_shapes(graph, example_inputs) if example_inputs is not None else None
    groups = _find_groups(graph, shapes, min_group, costs, notes)
    return _rewrite(graph, groups)


def _value_shapes(graph: Graph, example_inputs: Sequence[Any]) -> dict[Ref, Any]:
    """Shape/dtype of every referenced value, from one sequential no-grad run."""
    env = program_values(graph, example_inputs)
    out: dict[Ref, Any] = {}
    for node in graph:
        for r in node.inputs:
            v = r.resolve(env[r.node])
            out[r] = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None
    return out


def _fusable(node: Node) -> bool:
    return (
        isinstance(node.fn, nn.Module)
        and not node.kwargs
        and not node.mutates
        and not node.after
        and bool(node.inputs)
    )


def _find_groups(
    graph: Graph,
    shapes: dict[Ref, Any] | None,
    min_group: int,
    costs: dict[str, float] | None,
    notes: list[str] | None = None,
) -> list[list[str]]:
    groups: list[list[str]] = []
    for level in nx.topological_generations(graph.nx):
        buckets: dict[Any, list[str]] = {}
        for name in sorted(level, key=lambda n: graph.nodes[n].order):
            node = graph.nodes[name]
            if not _fusable(node):
                continue
            sig = module_signature(node.fn)
            if sig is None:
                continue
            if shapes is None:
                key: Any = (sig, tuple((r.node, r.index) for r in node.inputs))
            else:
                ins = tuple(shapes.get(r) for r in node.inputs)
                if any(s is None for s in ins):
                    continue
                key = (sig, ins)
            buckets.setdefault(key, []).append(name)
        for members in buckets.values():
            if len(members) < min_group:
                continue
            fuse = costs is None or should_fuse([costs[m] for m in members])
            if notes is not None:
                notes.append(_describe(graph, members, costs, fuse))
            if fuse:
                groups.append(members)
    return groups


def _describe(graph: Graph, members: list[str], costs: dict[str, float] | None, fuse: bool) -> str:
    what = f"{len(members)} x {type(graph.nodes[members[0]].fn).__name__} ({members[0]}, ...)"
    if costs is None:
        return f"fused {what}: identical modules on the same inputs"
    mean_cost = format_seconds(sum(costs[m] for m in members) / len(members))
    limit = format_seconds(FUSE_MEMBER_BELOW)
    if fuse:
        return f"fused {what}: {mean_cost} per member < {limit}, overhead-bound"
    return f"not fused {what}: {mean_cost} per member >= {limit}, branch overlap kept"


def has_candidates(graph: Graph, min_group: int = 2) -> bool:
    """True when some depth level holds ``min_group`` fusable modules of one structure
    (whatever their inputs): a quick check that runs nothing."""
    for level in nx.topological_generations(graph.nx):
        seen: dict[Any, int] = {}
        for name in level:
            node = graph.nodes[name]
            if _fusable(node) and (sig := module_signature(node.fn)) is not None:
                seen[sig] = seen.get(sig, 0) + 1
                if seen[sig] >= min_group:
                    return True
    return False


def _merge_of_group(
    node: Node, groups: Sequence[list[str]], group_of: dict[str, int]
) -> tuple[int, restack] | None:
    """``(group index, replacement)`` when ``node`` merges exactly all members of one group."""
    how = {stack: "stack", add: "sum", mean: "mean"}.get(type(node.fn))
    if how is None or node.kwargs or node.mutates or node.after:
        return None
    if any(r.index is not None or r.node not in group_of for r in node.inputs):
        return None
    gi = group_of[node.inputs[0].node]
    names = [r.node for r in node.inputs]
    members = groups[gi]
    if how == "stack" and names != members:
        return None
    if len(names) != len(members) or set(names) != set(members):
        return None
    return gi, restack(how, node.fn.dim if how == "stack" else 0)


def _rewrite(graph: Graph, groups: list[list[str]]) -> Graph:
    first_of = {g[0]: g for g in groups}
    group_of = {m: gi for gi, g in enumerate(groups) for m in g}
    merges = {}
    for node in graph:
        if node.name not in group_of:
            found = _merge_of_group(node, groups, group_of)
            if found is not None:
                merges[node.name] = found
    read = {r.node for node in graph if node.name not in merges for r in node.inputs}
    read |= {r.node for r in torch.utils._pytree.tree_leaves(graph.outputs) if isinstance(r, Ref)}
    out = Graph(graph.name)
    for node in graph:
        if node.is_input:
            out.input(node.name)
            continue
        if node.name in first_of:
            members = first_of[node.name]
            fused = f"hfuse:{members[0]}"
            nodes = [graph.nodes[m] for m in members]
            shared = [len({n.inputs[j] for n in nodes}) == 1 for j in range(len(node.inputs))]
            refs: list[Ref] = []
            for j, is_shared in enumerate(shared):
                refs.extend([node.inputs[j]] if is_shared else [n.inputs[j] for n in nodes])
            out.node(
                fused,
                HorizontalGroup([n.fn for n in nodes], shared),
                *[_plain(r, out) for r in refs],
            )
            for i, m in enumerate(members):
                if m in read:  # a member nobody reads alone is never split out
                    out.node(m, member(i), fused)
            continue
        if node.name in group_of:
            continue  # added with its group
        if node.name in merges:
            gi, op = merges[node.name]
            out.node(node.name, op, Ref(f"hfuse:{groups[gi][0]}", None, out.id))
            continue
        out.node(
            node.name,
            node.fn,
            *[_plain(r, out) for r in node.inputs],
            kwargs=node.kwargs,
            mutates=node.mutates,
            after=node.after,
        )
    out.output(
        torch.utils._pytree.tree_map(
            lambda r: _plain(r, out) if isinstance(r, Ref) else r, graph.outputs
        )
    )
    return out


def _plain(ref: Ref, graph: Graph) -> Ref:
    """The same reference in ``graph`` (by name: valid even to a node declared later)."""
    return Ref(ref.node, ref.index, graph.id)
