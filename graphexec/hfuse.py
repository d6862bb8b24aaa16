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
`HorizontalGroup`, followed by one ``gx.getitem(i)`` node per member that keeps the member's
name, so every downstream reference and every graph output still resolves.

Why the weights are stacked at every call
-----------------------------------------
`HorizontalGroup` runs ``torch.func.functional_call`` of the first member under
``torch.func.vmap``, with each parameter stacked from the *live* members
(``torch.stack([m.weight for m in members])``) inside the call. The stacked copy is part of the
autograd graph, so ``backward`` reaches each original parameter, and an optimizer step on the
originals is seen by the next call. A copy stacked once (``stack_module_state``) would go stale
after the first step. Stacking costs one copy of the group's parameters per call: cheap for
the small modules this pays for, and the reason fusion of large GEMMs is left to the cost model.

When it pays (measured, see ``docs/performance.md``): groups of many small members, where a
call is dominated by per-module Python and dispatch overhead (256 ``Linear(16,16)``: about
20x faster). For large members one batched GEMM on one thread does the same work as the loop,
so fusion is neutral and takes away branch concurrency; `should_fuse` holds the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from .graph import Graph, Node, Ref
from .merge import getitem

__all__ = ["HorizontalGroup", "horizontal_fuse", "module_signature", "should_fuse"]

#: Fuse a group when the members' measured mean cost is below this (seconds) ...
FUSE_MEMBER_BELOW = 200e-6


class HorizontalGroup(nn.Module):
    """Run ``K`` structurally identical modules as one ``vmap``-ed call over live weights.

    Parameters
    ----------
    members : sequence of nn.Module
        Registered as submodules (``members.<i>``), so ``parameters()`` sees them.
    shared : sequence of bool
        For each argument position: True when every member reads the same value (passed
        once, broadcast), False when each member has its own (passed ``K`` times, stacked).

    Returns (when called) a tensor with the members' outputs stacked on dim 0, or a list of
    the members' outputs when a member returns something other than one tensor.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> mods = [nn.Linear(3, 2) for _ in range(4)]
    >>> grp = HorizontalGroup(mods, shared=[True])
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(grp(x)[2], mods[2](x), atol=1e-6)
    True
    """

    def __init__(self, members: Sequence[nn.Module], shared: Sequence[bool]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.shared = tuple(shared)
        self._names = [n for n, _ in members[0].named_parameters()]

    def forward(self, *xs: Any) -> Any:
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
        per_member = [dict(m.named_parameters()) for m in self.members]
        params = {n: torch.stack([p[n] for p in per_member]) for n in self._names}
        template = self.members[0]

        def call(p: dict[str, torch.Tensor], *a: Any) -> Any:
            return functional_call(template, p, a)

        out = vmap(call, in_dims=(0, *in_dims))(params, *args)
        if isinstance(out, torch.Tensor):
            return out
        return [torch.utils._pytree.tree_map(lambda t, i=i: t[i], out) for i in range(k)]

    def extra_repr(self) -> str:
        return f"{len(self.members)} x {type(self.members[0]).__name__}, shared={self.shared}"


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

    Returns
    -------
    Graph
        Named ``graph.name``; fused nodes are ``hfuse:<first member>``, and each member's
        name now holds a ``gx.getitem(i)`` of the fused node, so references keep working.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("fan")
    >>> x = g.input("x")
    >>> g.output(g.node("sum", gx.add(), *[g.node(f"b{i}", nn.Linear(4, 4), x) for i in range(3)]))
    >>> f = horizontal_fuse(g)
    >>> [n for n in f.nodes][:3]
    ['x', 'hfuse:b0', 'b0']
    >>> x0 = torch.randn(2, 4)
    >>> torch.allclose(gx.SequentialExecutor().run(gx.plan(f), x0),
    ...                gx.SequentialExecutor().run(gx.plan(g), x0), atol=1e-6)
    True
    """
    graph.validate()
    shapes = _value_shapes(graph, example_inputs) if example_inputs is not None else None
    groups = _find_groups(graph, shapes, min_group, costs)
    return _rewrite(graph, groups)


def _value_shapes(graph: Graph, example_inputs: Sequence[Any]) -> dict[Ref, Any]:
    """Shape/dtype of every referenced value, from one sequential no-grad run."""
    env = dict(zip(graph.inputs, example_inputs, strict=True))
    order = list(nx.lexicographical_topological_sort(graph.nx, key=lambda n: graph.nodes[n].order))
    with torch.no_grad():
        for name in order:
            node = graph.nodes[name]
            if not node.is_input:
                env[name] = node(*[r.resolve(env[r.node]) for r in node.inputs])
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
    graph: Graph, shapes: dict[Ref, Any] | None, min_group: int, costs: dict[str, float] | None
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
            if costs is not None and not should_fuse([costs[m] for m in members]):
                continue
            groups.append(members)
    return groups


def _rewrite(graph: Graph, groups: list[list[str]]) -> Graph:
    first_of = {g[0]: g for g in groups}
    member_of = {m: i for g in groups for i, m in enumerate(g)}
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
                out.node(m, getitem(i), fused)
            continue
        if node.name in member_of:
            continue  # added with its group
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
