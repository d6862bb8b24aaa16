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

How the fused call runs, and why the weights are stacked at every call: `graphexec.hgroup`.

When it pays (measured, see ``docs/performance.md``): groups of many small members, where a
call is dominated by per-module Python and dispatch overhead (256 ``Linear(16,16)`` on
``[4,16]``, stacked and summed: 1.36 ms eager, 0.11 ms fused). For large members one batched
GEMM on one thread does the same work as the loop, so fusion is neutral and takes away
branch concurrency; `should_fuse` holds the rule, and `graphexec.plan` applies it to measured
costs by default (``hfuse="auto"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import torch
import torch.nn as nn

from .decisions import FUSION, Candidate, Decision
from .graph import Graph, Node, Ref
from .hgroup import HorizontalGroup, member, restack
from .interpret import program_values
from .merge import add, mean, stack
from .policy import DEFAULT
from .tuning import value_shapes
from .units import format_seconds

__all__ = [
    "HorizontalGroup",
    "candidate_reads",
    "describe_group",
    "has_candidates",
    "horizontal_fuse",
    "member",
    "module_signature",
    "restack",
    "should_fuse",
]

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


def should_fuse(
    member_costs: Sequence[float], member_below: float = DEFAULT.fuse_member_below
) -> bool:
    """The recommended cost-model rule: fuse when the members are small.

    Parameters
    ----------
    member_costs : sequence of float
        Measured (or estimated) seconds of each member.
    shapes : mapping, optional
        Each referenced value's shape and dtype (`graphexec.tuning.Sample.shapes`), in place
        of running the graph on ``example_inputs`` to learn them.
    member_below : float
        Fuse when the mean member cost is below this (the policy's ``fuse_member_below``,
        200 µs). Small members are dominated by per-call
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
    notes: list[Decision] | None = None,
    member_below: float = DEFAULT.fuse_member_below,
    shapes: Mapping[Ref, Any] | None = None,
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
        `should_fuse` says so, by ``member_below``.
    notes : list, optional
        Filled with one record per group found (`describe_group`): fused or not, and why.

    Returns
    -------
    Graph
        ``graph`` itself when no group is fused; else a new graph named ``graph.name``, where
        fused nodes are ``hfuse:<first member>``, a merge of all members reads the group
        through a `restack`, and a member read elsewhere keeps its name as a `member` of the
        group, so references keep working.

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
    if shapes is None and example_inputs is not None:
        shapes = value_shapes(graph, program_values(graph, example_inputs))
    groups = _find_groups(graph, shapes, min_group, costs, notes, member_below)
    return _rewrite(graph, groups) if groups else graph  # nothing fused: nothing to try


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
    shapes: Mapping[Ref, Any] | None,
    min_group: int,
    costs: dict[str, float] | None,
    notes: list[Decision] | None,
    member_below: float,
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
            fuse = costs is None or should_fuse([costs[m] for m in members], member_below)
            if notes is not None:
                notes.append(describe_group(graph, members, costs, fuse, member_below))
            if fuse:
                groups.append(members)
    return groups


def describe_group(graph: Graph, members: Sequence[str], costs: Mapping[str, float] | None,
                   fuse: bool, member_below: float = DEFAULT.fuse_member_below,
                   dropped: bool = False) -> Decision:  # fmt: skip
    """The record of one group found: fused or not (``fuse``), by the size rule or, without
    ``costs``, because its members are identical modules on the same inputs; ``dropped``: the
    rule said fuse, and a trial of the fused plan did not keep it. Its candidates are the
    members, with their measured seconds."""
    what = f"{len(members)} x {type(graph.nodes[members[0]].fn).__name__} ({members[0]}, ...)"
    found = tuple(Candidate(m, None if costs is None else costs[m]) for m in members)
    if costs is None:
        why = "identical modules on the same inputs"
    elif fuse:
        mean_cost = format_seconds(sum(costs[m] for m in members) / len(members))
        why = f"{mean_cost} per member < {format_seconds(member_below)}, overhead-bound"
    else:
        mean_cost = format_seconds(sum(costs[m] for m in members) / len(members))
        why = f"{mean_cost} per member >= {format_seconds(member_below)}, not overhead-bound"
    fused = fuse and not dropped
    return Decision(FUSION, "fused" if fused else "not fused",
                    f"{'fused' if fused else 'not fused'} {what}: {why}", found,
                    measured=costs is not None,
                    detail={"members": list(members), "rule": fuse})  # fmt: skip


def has_candidates(graph: Graph, min_group: int = 2) -> bool:
    """True when some depth level holds ``min_group`` fusable modules of one structure
    (whatever their inputs): a quick check that runs nothing."""
    return bool(_candidates(graph, min_group))


def candidate_reads(graph: Graph, min_group: int = 2) -> set[str]:
    """The nodes whose values the possible groups read (a fused call's inputs): what a run
    of the example inputs keeps for the fused calls' check (`graphexec.tuning.Sample`)."""
    return {r.node for name in _candidates(graph, min_group) for r in graph.nodes[name].inputs}


def _candidates(graph: Graph, min_group: int) -> list[str]:
    """Fusable modules that share their structure with ``min_group - 1`` others of their
    level (whatever their inputs)."""
    found: list[str] = []
    for level in nx.topological_generations(graph.nx):
        by_sig: dict[Any, list[str]] = {}
        for name in level:
            node = graph.nodes[name]
            if _fusable(node) and (sig := module_signature(node.fn)) is not None:
                by_sig.setdefault(sig, []).append(name)
        found += [n for names in by_sig.values() if len(names) >= min_group for n in names]
    return found


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
    out.source, out.imported_by = graph.source, graph.imported_by  # the same model, fused
    out.call = graph.call
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
