"""What `graphexec.trace` does with ``torch.export``: the second import route, export's
constant inputs and checks, and the module a graph is measured against.

What it decides
---------------
* **The route.** ``gx.trace(model, example_inputs=args)`` traces with ``torch.fx`` where fx
  can; where fx stops (a library raising on a proxy, ``torch.finfo(x.dtype)``, a Python
  ``if`` on a shape), it calls ``torch.export.export(model, args, kwargs)`` (non-strict, as
  torch's default) and imports the program's ``module()``. ``graph.imported_by`` says which
  route and why.
* **Constant inputs.** Export records every leaf of ``(args, kwargs)`` as a placeholder, the
  ``None`` of ``(features, None, decoder_ids)`` and plain numbers included, with its value
  fixed (guards check it). Those are not graph inputs: the graph takes one input per tensor
  leaf (`constant_inputs`), and partitions read the fixed value in place of the placeholder.
* **The module as it is** (``graph.source``, what `graphexec.plan` times its plans against
  and falls back to). On the export route it is the user's own module, called with the
  original ``(args, kwargs)`` structure rebuilt from the graph's inputs (`as_called`): the
  program's ``module()`` runs aten-level ops and ran ~1.2x slower than the model it came from
  on transformer encoders, and the promise is "never slower than the model the user had". For
  an ``ExportedProgram`` handed over directly the user's module is unknown: the source is the
  program's ``module()``, and the note says how to keep the user's own.
* **Export's checks.** Guards (``_guards_fn``) and assertion nodes (``_assert_scalar``,
  ``_assert_tensor_metadata``, ``sym_constrain_range*``) that read only graph inputs and
  shape arithmetic (`input_checks`) run together as one first node, ``check_inputs``.
  Export's guard module holds its check (plain Python over the inputs' sizes) wrapped in a
  Dynamo configuration context, which does not pickle (so the node could not go to a Dask
  worker) and is entered on every call; graphexec runs the check itself (`InputGuards`),
  and its failure says which size export fixed and how to make it dynamic.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .fx_partition import closure

__all__ = ["BATCH", "InputGuards", "as_called", "constant_inputs", "export", "guards_class",
           "input_checks", "is_check", "own_guards", "unwrapped_check"]


def _aten(*names: str) -> set[Any]:
    ops = (getattr(torch.ops.aten, n) for n in names if hasattr(torch.ops.aten, n))
    return {getattr(op, o) for op in ops for o in op.overloads()}


#: Export's checks on its inputs (with ``_guards_fn`` modules): run in ``check_inputs``.
_CHECKS = _aten("_assert_scalar", "_assert_tensor_metadata", "sym_constrain_range",
                "sym_constrain_range_for_size", "_assert_async")  # fmt: skip
#: Values export fixes in a placeholder (``None``, plain numbers, strings): not graph inputs.
_CONSTANT = (type(None), bool, int, float, str)


def constant_inputs(gm: fx.GraphModule) -> dict[fx.Node, Any]:
    """Placeholder -> value, for the placeholders of an exported module whose value export
    fixed (``meta["val"]`` a constant, not a tensor or a symbolic size)."""
    if _in_spec(gm) is None:  # a plain fx graph: every placeholder is an input
        return {}
    return {
        n: n.meta["val"]
        for n in gm.graph.nodes
        if n.op == "placeholder" and "val" in n.meta and isinstance(n.meta["val"], _CONSTANT)
    }


def _in_spec(gm: fx.GraphModule) -> pytree.TreeSpec | None:
    info = getattr(gm.graph._codegen, "pytree_info", None)
    return None if info is None else info.in_spec


def as_called(gm: fx.GraphModule, target: Callable[..., Any]) -> Callable[..., Any]:
    """``target`` (the user's module, or the exported module ``gm`` itself) called as the
    graph made from ``gm`` is: with its tensor inputs, positionally.

    The graph's inputs are the placeholders of ``gm`` but its constants; the call puts the
    constants back, rebuilds ``(args, kwargs)`` with the program's input spec and calls
    ``target(*args, **kwargs)``. Where that is ``target(*inputs)`` already (positional tensors
    only), ``target`` itself is returned: nothing runs between a call and the module.
    """
    spec = _in_spec(gm)
    if spec is None:
        return target
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    constants = constant_inputs(gm)
    inputs = [i for i, n in enumerate(holders) if n not in constants]
    if not constants and spec == pytree.tree_flatten((tuple(holders), {}))[1]:
        return target
    template = [constants.get(n) for n in holders]

    def call(*values: Any) -> Any:
        leaves = list(template)
        for i, v in zip(inputs, values, strict=True):
            leaves[i] = v
        args, kwargs = pytree.tree_unflatten(leaves, spec)
        return target(*args, **kwargs)

    call.__wrapped__ = target  # type: ignore[attr-defined]
    return call


#: ``gx.trace(..., dynamic_shapes=)``'s default: the first dimension of every tensor dynamic.
BATCH = "batch"


class InputGuards(nn.Module):
    """Export's input guards (its ``_guards_fn`` module) as graphexec runs them: the check
    function itself, without the Dynamo configuration context it was wrapped in, and a
    failure that says how to accept other sizes."""

    def __init__(self, check: Callable[..., Any]):
        super().__init__()
        self.check = check

    def forward(self, *args: Any) -> None:
        try:
            self.check(*args)
        except AssertionError as exc:
            if not str(exc).startswith("Guard failed"):
                raise
            raise AssertionError(
                f"{exc} (torch.export fixed this size to the example's: to take others, "
                "import with gx.trace(model, example_inputs=..., dynamic_shapes=...) marking "
                "that dimension torch.export.Dim.AUTO)"
            ) from None


def guards_class() -> type | None:
    """torch.export's guard module class (``GuardsFn``), where this torch has one."""
    try:
        from torch.export._unlift import GuardsFn
    except ImportError:  # pragma: no cover - torch before export's guard modules
        return None
    return GuardsFn


def unwrapped_check(fn: Any) -> Any:
    """The function inside Dynamo's ``wrap_dunder_call_ctx_manager`` wrappers (what a
    ``GuardsFn``'s ``forward`` is)."""
    while getattr(fn, "__qualname__", "").endswith("wrap_dunder_call_ctx_manager.<locals>.inner"):
        fn = inspect.getclosurevars(fn).nonlocals["func"]
    return fn


def own_guards(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with export's guard module replaced by `InputGuards` (in place; returned)."""
    guards = guards_class()
    for name, child in list(gm.named_children()):
        if guards is not None and isinstance(child, guards):
            setattr(gm, name, InputGuards(unwrapped_check(child.forward)))
    return gm


def export(
    module: Any, args: Sequence[Any], kwargs: dict[str, Any], dynamic_shapes: Any = BATCH
) -> tuple[fx.GraphModule, str]:
    """``torch.export.export(module, args, kwargs, dynamic_shapes=...).module()``, and what
    it made dynamic, in words.

    ``dynamic_shapes="batch"`` marks the first dimension of every tensor ``Dim.AUTO`` (export
    makes it a symbol where the model allows, else keeps the example's size); where export
    fails with it, the program is exported again with every size fixed, and the words say why.
    Anything else is ``torch.export``'s own ``dynamic_shapes`` (``None``: every size fixed).
    """
    import torch.export

    # Contiguous examples: export guards the strides of a dynamic-batch view (``ids[:, :8]``
    # gave "decoder_input_ids.stride()[0] != 8"), so a contiguous copy of the same values,
    # which is what a Dask worker receives, failed the check.
    args, kwargs = pytree.tree_map(_contiguous, (tuple(args), kwargs))
    if not (isinstance(dynamic_shapes, str) and dynamic_shapes == BATCH):
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes)
        fixed = "every size as in the example" if dynamic_shapes is None else "as given"
        return own_guards(program.module()), f"dynamic shapes {fixed}"
    try:
        program = torch.export.export(module, args, kwargs,
                                      dynamic_shapes=_batch_dynamic(module, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - a model export cannot make batch-dynamic
        static = own_guards(torch.export.export(module, args, kwargs).module())
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return static, f"every size fixed as in the example (a dynamic batch failed: {why})"
    return own_guards(program.module()), _batch_words(program)


def _contiguous(leaf: Any) -> Any:
    strided = isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided
    return leaf.contiguous() if strided else leaf


def _batch_dynamic(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``dynamic_shapes`` with ``Dim.AUTO`` for the first dimension of every tensor leaf."""
    from torch.export import Dim

    def spec(leaf: Any) -> Any:
        return {0: Dim.AUTO} if isinstance(leaf, torch.Tensor) and leaf.dim() else None

    try:  # by parameter name: export matches a mix of args and kwargs that way
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    except (TypeError, ValueError, AttributeError):
        return pytree.tree_map(spec, args) if not kwargs else None
    return {name: pytree.tree_map(spec, value) for name, value in bound.items()}


def _batch_words(program: Any) -> str:
    """Which inputs' first dimension the program left dynamic, from its placeholders."""
    sig = program.graph_signature
    dynamic, fixed = [], []
    for n in program.graph.nodes:
        if n.op != "placeholder" or n.name not in sig.user_inputs:
            continue
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim():
            (dynamic if isinstance(val.shape[0], torch.SymInt) else fixed).append(n.name)
    if not fixed:
        return "batch size dynamic"
    if not dynamic:
        return "batch size fixed as in the example (the model needs it)"
    return f"batch size dynamic but for {', '.join(fixed)} (fixed as in the example)"


# -- export's checks ----------------------------------------------------------------------------
def is_check(n: fx.Node) -> bool:
    return (n.op == "call_module" and str(n.target).startswith("_guards_fn")) or (
        n.op == "call_function" and n.target in _CHECKS
    )


def input_checks(gm: fx.GraphModule) -> list[fx.Node]:
    """Export's guard and assert nodes that read only graph inputs and shape arithmetic
    (nodes whose example value is no tensor), with that arithmetic, in program order."""
    taken: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if not is_check(n):
            continue
        up = closure([n], lambda m: m.all_input_nodes)
        if all(a.op in ("placeholder", "get_attr") or is_check(a)
               or ("val" in a.meta and not isinstance(a.meta["val"], torch.Tensor))
               for a in up):  # fmt: skip
            taken |= up | {n}
    return [n for n in gm.graph.nodes if n in taken and n.op not in ("placeholder", "get_attr")]
