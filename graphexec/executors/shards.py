"""A split plan's batch: cut each call's inputs into shards, and merge the shards' outputs.

A plan with ``plan.split`` (data parallelism, decided by `graphexec.split`) is run by every
executor through one path, `Executor.run` (`graphexec.executors.base`)::

    Executor.run(plan, *args)
      -> Executor._run_split(plan, args, kwargs, profile)
           shard_inputs        bind, check the batch sizes agree, torch.tensor_split each
                               batched input along its axis (uneven shards are fine)
           executor._run_shards(whole, shards, events)     * the backend's override point
             Executor          one shard after another (the reference; the plan's budget)
             ThreadExecutor    shards on one-thread budget lanes at once
             CudaStreamExecutor  shards on side streams, joined on the caller's stream
             DaskExecutor      each shard's whole plan as one job, on different workers
           merge_outputs       torch.cat each output leaf along its batch axis

This module is plain functions over tensors: it knows nothing of executors.

``whole`` is the plan without its split (made once per plan by the executor). Shards are
views of the caller's tensors and outputs are concatenated with ``torch.cat``, so autograd
runs through both: every shard's graph joins at the ``cat`` and ``backward()`` accumulates
into the same parameters, as one call over the whole batch would.

A batch smaller than ``plan.split.shards`` runs in as many shards as it has samples (an
empty batch: one); inputs whose batch sizes disagree are refused with a `ValueError` naming
them, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..graph import Graph
from ..interpret import bind_inputs
from ..plans import Split

__all__ = ["merge_outputs", "shard_inputs"]


def shard_inputs(
    graph: Graph, split: Split, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """The graph inputs of each shard, in declaration order.

    Raises
    ------
    ArityError
        If the inputs do not match the graph's.
    ValueError
        If a batched input is not a tensor with its batch axis, or batched inputs disagree
        on the batch size (naming them).

    Examples
    --------
    >>> import torch, graphexec as gx
    >>> g = gx.Graph("g")
    >>> g.output(g.node("double", lambda t, s: s * t, g.input("x"), g.input("scale")))
    >>> split = gx.Split(shards=2, inputs=(0, None), outputs=(0,))
    >>> [tuple(x.shape) for x, _ in shard_inputs(g, split, (torch.ones(5, 3), 2.0), {})]
    [(3, 3), (2, 3)]
    """
    env = bind_inputs(graph, args, kwargs)
    sizes = {}
    for name, axis in zip(graph.inputs, split.inputs, strict=True):
        if axis is None:
            continue
        value = env[name]
        if not isinstance(value, torch.Tensor) or value.dim() <= axis:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"graph '{graph.name}': input '{name}' is split along axis {axis} "
                f"(data_parallel), but it has no such axis: {shape}"
            )
        sizes[name] = value.shape[axis]
    if len(set(sizes.values())) > 1:
        said = ", ".join(f"'{n}' {b}" for n, b in sizes.items())
        raise ValueError(
            f"graph '{graph.name}': the batched inputs disagree on the batch size ({said}); "
            "a split plan cuts them all into the same shards"
        )
    batch = next(iter(sizes.values()), 0)
    k = max(1, min(split.shards, batch))
    cut = {n: torch.tensor_split(env[n], k, dim=a)
           for n, a in zip(graph.inputs, split.inputs, strict=True) if a is not None}  # fmt: skip
    return [tuple(cut[n][i] if n in cut else env[n] for n in graph.inputs) for i in range(k)]


def merge_outputs(split: Split, outputs: Sequence[Any]) -> Any:
    """The shards' outputs as one: each tensor leaf concatenated along its batch axis."""
    if len(outputs) == 1:
        return outputs[0]
    leaves = [pytree.tree_flatten(out) for out in outputs]
    spec = leaves[0][1]
    merged = []
    for i, axis in enumerate(split.outputs):
        parts = [flat[i] for flat, _ in leaves]
        merged.append(parts[0] if axis is None else torch.cat(parts, dim=axis))
    return pytree.tree_unflatten(merged, spec)

