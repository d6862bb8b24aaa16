"""Data parallelism: whether a plan may split the batch, and whether splitting pays.

``gx.plan(graph, example_inputs, data_parallel=k | "auto")`` cuts each call's batch into
shards, runs the plan on each (on lanes, streams or workers: `graphexec.executors.shards`)
and concatenates the outputs. Three things are decided here, from the example inputs,
before anything is dispatched::

    split_step(plan, inputs, data_parallel, batch_axis, check)      (called by gx.plan)
      -> batch_axes      which inputs are batched, along which axis (axis 0 by default, or
                         as given), and the batch size; inputs that disagree are refused
      -> check_split     the graph run whole and run in shards (sequentially, no grad): every
                         node's value must be the concatenation of its shards' values (or,
                         without a batch axis, equal in every shard), and every output must
                         have a batch axis; the first node that breaks this is named in a
                         `SplitError` (BatchNorm in training mode, a reduction over the batch)
      -> _trial          ``"auto"``: the plan whole against the plan split over one-thread
                         lanes, side by side (`graphexec.trials.decide`): the split is kept
                         only when it wins by the policy's ``gain``, twice

The check is as strong as the example inputs: a batch whose samples are all equal cannot show
that a node mixes them. Random nodes (``nn.Dropout``) are checked with their randomness off,
and every buffer (running statistics) is put back afterwards, so the check changes no state.

Why ``"auto"`` rarely splits on a CPU: torch already spreads each op over every core, so two
shards at one thread each do the same work with the same cores plus the hand-offs, and their
Python code shares one interpreter lock. It pays where ops are too small to use the cores
(small layers at a large batch) or on devices with more room than one shard fills; see
``docs/concepts.md`` for what was measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from . import trials
from .budget import lanes
from .decisions import SPLIT, Decision, candidates
from .errors import GraphError, NodeError
from .executors.sequential import SequentialExecutor
from .executors.shards import shard_inputs
from .executors.threads import ThreadExecutor
from .graph import Graph, Ref
from .interpret import program_values
from .plans import Plan, Split
from .policy import DEFAULT, Policy
from .units import speed_words

__all__ = ["SplitError", "batch_axes", "check_split", "restored", "split_step", "validate"]

#: Shard outputs concatenated and the whole batch's output agree within these tolerances (a
#: GEMM over fewer rows may sum in another order).
RTOL, ATOL = 1e-4, 1e-5

BatchAxis = int | Mapping[str, int | None]


class SplitError(GraphError):
    """A graph whose result depends on the whole batch: splitting it would change it.

    ``node`` names the node (or output) found to depend on it.
    """


def validate(data_parallel: Any, batch_axis: Any, graph: Graph,
             inputs: Sequence[Any] | None) -> None:  # fmt: skip
    """Raise `ValueError` for a ``data_parallel`` / ``batch_axis`` option that cannot work on
    ``inputs`` (see `batch_axes`), before anything runs.

    >>> validate(0, 0, None, ())
    Traceback (most recent call last):
    ...
    ValueError: data_parallel must be False, 'auto' or a number of shards >= 1, got 0
    """
    ok = (
        data_parallel is False
        or data_parallel == "auto"
        or (
            isinstance(data_parallel, int)
            and not isinstance(data_parallel, bool)
            and data_parallel >= 1
        )
    )
    if not ok:
        raise ValueError(
            f"data_parallel must be False, 'auto' or a number of shards >= 1, got {data_parallel!r}"
        )
    axes = batch_axis.values() if isinstance(batch_axis, Mapping) else [batch_axis]
    if not all(a is None or (isinstance(a, int) and a >= 0) for a in axes):
        raise ValueError(f"batch_axis must be an axis >= 0 or {{input: axis or None}}, got "
                         f"{batch_axis!r}")  # fmt: skip
    if data_parallel is False:
        return
    if inputs is None:
        raise ValueError(
            "data_parallel needs example_inputs: the split is checked on them (a graph whose "
            "result depends on the whole batch is refused) and, for 'auto', measured on them"
        )
    batch_axes(graph, inputs, batch_axis)


def batch_axes(graph: Graph, inputs: Sequence[Any], batch_axis: BatchAxis = 0
               ) -> tuple[tuple[int | None, ...], int]:  # fmt: skip
    """Each graph input's batch axis (None: passed whole to every shard) and the batch size.

    With an int, every tensor input with that axis is batched; non-tensors and tensors
    without it are passed whole. With a mapping, the inputs it names get its axis (None:
    whole) and the others are inferred as with axis 0.

    Raises
    ------
    ValueError
        If batched inputs disagree on the batch size (naming them: give ``batch_axis`` with
        None for an input meant to be passed whole), an input named in ``batch_axis`` is not
        a graph input or has no such axis, or no input is batched.

    Examples
    --------
    >>> import torch, graphexec as gx
    >>> g = gx.Graph("g")
    >>> g.output(g.node("mul", torch.mul, g.input("x"), g.input("w")))
    >>> batch_axes(g, (torch.ones(8, 3), torch.ones(3)), {"w": None})
    ((0, None), 8)
    """
    given = dict(batch_axis) if isinstance(batch_axis, Mapping) else {}
    unknown = sorted(set(given) - set(graph.inputs))
    if unknown:
        raise ValueError(f"batch_axis names {unknown}, not inputs of graph '{graph.name}' "
                         f"(inputs: {', '.join(graph.inputs)})")  # fmt: skip
    default = 0 if isinstance(batch_axis, Mapping) else batch_axis
    axes: list[int | None] = []
    for name, value in zip(graph.inputs, inputs, strict=True):
        axis = given.get(name, default)
        has = isinstance(value, torch.Tensor) and value.dim() > (axis or 0)
        if name in given and axis is not None and not has:
            raise ValueError(f"batch_axis: input '{name}' has no axis {axis}: "
                             f"{_shape(value)}")  # fmt: skip
        axes.append(axis if has else None)
    sizes = {n: v.shape[a] for n, v, a in zip(graph.inputs, inputs, axes, strict=True)
             if a is not None}  # fmt: skip
    if not sizes:
        raise ValueError(f"data_parallel: no input of graph '{graph.name}' has a batch axis "
                         f"{batch_axis!r} to split along")  # fmt: skip
    if len(set(sizes.values())) > 1:
        said = ", ".join(f"'{n}' {b}" for n, b in sizes.items())
        raise ValueError(
            f"data_parallel: the inputs of graph '{graph.name}' disagree on the batch size "
            f"({said}); give batch_axis={{'<input>': None}} for an input to pass whole to "
            "every shard"
        )
    return tuple(axes), next(iter(sizes.values()))


def check_split(graph: Graph, inputs: Sequence[Any], split: Split) -> tuple[int | None, ...]:
    """Run the graph whole and in ``split.shards`` shards; each output leaf's batch axis.

    Raises
    ------
    SplitError
        Naming the first node (in program order) whose value is not the concatenation of its
        shards' values, or does not agree across shards where it has no batch axis; or an
        output without a batch axis; or a node that fails on a shard.
    """
    shards = shard_inputs(graph, split, inputs, {})
    with _state_kept(graph), torch.no_grad():
        whole = program_values(graph, inputs)
        parts = []
        for i, s in enumerate(shards):
            try:
                parts.append(program_values(graph, s))
            except NodeError as exc:
                raise SplitError(
                    f"node '{exc.node}' fails on a shard of the batch (shard {i + 1} of "
                    f"{len(shards)}): {exc.__cause__}; the graph cannot be split",
                    exc.node,
                ) from exc
    sizes = [_size(s, split) for s in shards]
    for name in graph.program_order():
        if graph.nodes[name].is_input:
            continue
        why = _breaks(whole[name], [p[name] for p in parts], sizes)
        if why:
            raise SplitError(
                f"node '{name}' ({_kind(graph, name)}) depends on the whole batch: {why}; "
                "the plan cannot split it (data_parallel=False)",
                name,
            )
    return _output_axes(graph, whole, parts, sizes)


@contextlib.contextmanager
def _state_kept(graph: Graph) -> Iterator[None]:
    """Buffers put back and dropout off while the check runs (restored on every path)."""
    modules = [n.fn for n in graph if isinstance(n.fn, nn.Module)]
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    random = [d for m in modules for d in m.modules()
              if isinstance(d, nn.modules.dropout._DropoutNd) and d.training]  # fmt: skip
    for d in random:
        d.eval()
    try:
        yield
    finally:
        for d in random:
            d.train()
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _size(shard: tuple[Any, ...], split: Split) -> int:
    return next(v.shape[a] for v, a in zip(shard, split.inputs, strict=True) if a is not None)


def _breaks(whole: Any, parts: list[Any], sizes: list[int]) -> str | None:
    """Why a node's shard values are not its whole value, or None.

    Inside the graph only floating-point values are compared: non-tensors (a shape read off a
    shard) and integer tensors (``torch.arange(batch)`` indexing the shard's own rows, as
    CLIP's pooling does) rightly differ per shard, and what they feed is compared. Graph
    outputs are compared whatever their type (`_output_axes`).
    """
    flat = pytree.tree_leaves(whole)
    shard_flats = [pytree.tree_leaves(p) for p in parts]
    if any(len(f) != len(flat) for f in shard_flats):
        return "its shards return another structure than the whole batch"
    for i, w in enumerate(flat):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            continue
        pieces = [f[i] for f in shard_flats]
        if not all(isinstance(p, torch.Tensor) for p in pieces):
            return "its shards return other types than the whole batch"
        axis = _axis(w, pieces, sizes)
        if axis is None:
            if all(_close(p, w) for p in pieces):
                continue  # no batch axis and the same in every shard: fine
            return (
                f"its output {_shape(w)} has no batch axis and differs between shards "
                "(it mixes the samples of the batch, as a reduction over the batch axis does)"
            )
        merged = torch.cat(pieces, dim=axis)
        if not _close(merged, w):
            gap = (merged.double() - w.double()).abs().max().item()
            return (
                f"its shards concatenated along axis {axis} differ from the whole batch's "
                f"output by up to {gap:.3g} (it mixes the samples of a batch, as BatchNorm in "
                "training mode does with its batch statistics)"
            )
    return None


def _axis(whole: torch.Tensor, pieces: list[Any], sizes: list[int]) -> int | None:
    """The first axis along which ``pieces`` have the shard sizes and ``whole`` their sum."""
    total = sum(sizes)
    for d in range(whole.dim()):
        if whole.shape[d] != total:
            continue
        if all(isinstance(p, torch.Tensor) and p.dim() == whole.dim() and p.shape[d] == n
               and p.shape[:d] + p.shape[d + 1:] == whole.shape[:d] + whole.shape[d + 1:]
               for p, n in zip(pieces, sizes, strict=True)):  # fmt: skip
            return d
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(
        a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=True
    )


def _output_axes(graph: Graph, whole: Mapping[str, Any], parts: list[Mapping[str, Any]],
                 sizes: list[int]) -> tuple[int | None, ...]:  # fmt: skip
    """Each output leaf's batch axis; a `SplitError` naming an output that has none."""
    refs = pytree.tree_leaves(graph.outputs)
    axes: list[int | None] = []
    for r in refs:
        name = r.node if isinstance(r, Ref) else repr(r)
        w = r.resolve(whole[r.node]) if isinstance(r, Ref) else r
        pieces = [r.resolve(p[r.node]) if isinstance(r, Ref) else r for p in parts]
        if not isinstance(w, torch.Tensor):
            if all(type(p) is type(w) and p == w for p in pieces):
                axes.append(None)  # the same constant in every shard
                continue
            raise SplitError(f"output '{name}' is not a tensor and differs between shards: "
                             "it cannot be merged", name)  # fmt: skip
        axis = _axis(w, pieces, sizes)
        if axis is None:
            raise SplitError(
                f"output '{name}' has no batch axis: its shape {_shape(w)} does not follow "
                f"the batch size {sum(sizes)} (shards of {sizes} gave "
                f"{[_shape(p) for p in pieces]}); the plan cannot split it",
                name,
            )
        if not _close(torch.cat(pieces, dim=axis), w):
            raise SplitError(
                f"output '{name}' of the shards, concatenated along axis {axis}, is not the "
                "whole batch's: it depends on the whole batch; the plan cannot split it",
                name,
            )
        axes.append(axis)
    return tuple(axes)


def _kind(graph: Graph, name: str) -> str:
    fn = graph.nodes[name].fn
    kind = type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__name__", "fn")
    if isinstance(fn, nn.Module):
        kind += ", training" if fn.training else ", eval"
    return kind


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


# -- the decision ---------------------------------------------------------------------------------
def split_step(p: Plan, inputs: Sequence[Any], data_parallel: bool | int | str,
               batch_axis: BatchAxis, check: bool, policy: Policy = DEFAULT) -> Plan:  # fmt: skip
    """``p`` with the batch split as ``data_parallel`` asks (`graphexec.tune` calls this last).

    ``k``: split into ``k`` shards, or raise (`SplitError` naming the node, `ValueError` for
    a batch smaller than ``k``). ``"auto"``: split over `graphexec.budget.lanes` one-thread
    lanes where the check passes and the split wins a trial; otherwise not, and
    ``plan.decisions`` says why.
    """
    if data_parallel is False:
        return p
    axes, batch = batch_axes(p.graph, inputs, batch_axis)
    if data_parallel != "auto":
        if batch < data_parallel:
            raise ValueError(f"data_parallel={data_parallel} needs a batch of at least "
                             f"{data_parallel}; the example batch has {batch}")  # fmt: skip
        split = _checked(p.graph, inputs, Split(data_parallel, axes, ()))
        line = Decision(SPLIT, "split", f"data parallel: {data_parallel} shards, as asked "
                        "(checked on the example inputs)", measured=False)  # fmt: skip
        # the calls were measured whole: a split call is not what drift should compare with
        return dataclasses.replace(p, split=split, call_seconds=None,
                                   decisions=(*p.decisions, line))  # fmt: skip
    k = min(lanes(), batch)
    if k < 2:
        return _not(p, f"a batch of {batch} cannot be split")
    try:
        split = _checked(p.graph, inputs, Split(k, axes, ()))
    except SplitError as exc:
        return _not(p, f"refused: {exc}")
    if not check:
        return _not(p, "not tried (check=False): a split is kept only when it wins a trial")
    return _trial(p, dataclasses.replace(p, split=split), inputs, policy)


def restored(record: Mapping[str, Any] | None) -> Split | None:
    """The `Split` a cache record stores (``dataclasses.asdict``), or None."""
    if record is None:
        return None

    def axes(values: Sequence[Any]) -> tuple[int | None, ...]:
        return tuple(None if a is None else int(a) for a in values)

    return Split(int(record["shards"]), axes(record["inputs"]), axes(record["outputs"]))


def _checked(graph: Graph, inputs: Sequence[Any], split: Split) -> Split:
    return dataclasses.replace(split, outputs=check_split(graph, inputs, split))


def _not(p: Plan, why: str, outcome: trials.Outcome | None = None,
         gain: float | None = None) -> Plan:  # fmt: skip
    line = Decision(SPLIT, "whole", f"data parallel: not split: {why}",
                    candidates(outcome.seconds) if outcome is not None else (), gain,
                    measured=outcome is not None)  # fmt: skip
    return dataclasses.replace(p, decisions=(*p.decisions, line))


def _trial(p: Plan, split: Plan, inputs: Sequence[Any], policy: Policy) -> Plan:
    """The plan whole against the plan split, side by side; the split must win by the
    policy's ``gain``.

    Shards run on one-thread lanes, so the whole plan is also tried at one intra-op thread
    (where the caller has more): under load torch's threads can collapse (measured here:
    GoogLeNet's whole batch 8.7x slower than two one-thread shards), and a split that wins
    only by leaving them behind is a thread budget (`graphexec.budget`), not data
    parallelism. The split must beat the better whole run.
    """
    k = split.data_parallel
    words = {"whole": "the plan on the whole batch", ONE: "the whole batch at 1 intra-op thread",
             "split": f"{k} shards on one-thread lanes"}  # fmt: skip
    at_one = dataclasses.replace(p, thread_budget=1)
    with ThreadExecutor() as threads, SequentialExecutor() as one_by_one:
        whole_runner = threads if p.parallel else one_by_one
        runs = {"whole": lambda: whole_runner.run(p, *inputs)}
        if p.thread_budget is None and torch.get_num_threads() > 1:
            runs[ONE] = lambda: whole_runner.run(at_one, *inputs)
        runs["split"] = lambda: threads.run(split, *inputs)
        # k shards of the same ops cannot beat the whole batch at one thread k-fold
        ref = ONE if ONE in runs else "whole" if p.thread_budget == 1 else None
        floors = {"split": (ref, policy.floor / k)} if ref else None
        outcome = trials.decide(runs, floors=floors, words=words, policy=policy)
    wholes = [n for n in runs if n != "split" and n not in outcome.aside] or ["whole"]
    best = min(wholes, key=outcome.ratios.__getitem__)
    ran = speed_words(outcome.ratios["split"] / outcome.ratios[best], 1.0, words[best])
    aside = f"; {outcome.aside['split']}" if "split" in outcome.aside else ""
    if outcome.pick == "split":
        line = Decision(SPLIT, "split", f"data parallel: {k} shards kept: they ran {ran} "
                        f"(measured side by side){aside}", candidates(outcome.seconds),
                        policy.gain)  # fmt: skip
        return dataclasses.replace(split, call_seconds=outcome.seconds_of("split"),
                                   decisions=(*p.decisions, line))  # fmt: skip
    return _not(p, f"{words['split']} ran {ran} (measured side by side); a split must save "
                   f"{1 - policy.gain:.0%}{aside}", outcome, policy.gain)  # fmt: skip


ONE = "whole at 1"
