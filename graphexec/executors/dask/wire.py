"""How a node crosses to a Dask worker: packed once on the client, in a form any worker loads.

What it decides
---------------
* **Packed by graphexec, not by Dask's fallback.** A node travels as a `NodeCopy`: its
  callable and weights pickled by `pack` (a ``cloudpickle`` pickler: classes and functions
  that a worker can import go by name, the rest, such as a lambda or a class defined in
  ``__main__``, by value, as Dask itself does) before anything is dispatched. A node that
  cannot be packed raises `UnsendableNodeError` on the client, naming the node, the object
  inside it that does not pickle and the ways out, instead of Dask's ``Could not serialize``
  after hundreds of lines of logged tracebacks. One node scattered to several workers is
  packed once.
* **torch.fx modules travel as their code and their state.** ``torch.fx.GraphModule``
  pickles its generated code and re-traces it with a plain ``torch.fx.Tracer`` when it is
  loaded, to get a graph back. The graphs graphexec runs are not all made by that tracer:
  ``torch.export`` and Dynamo write aten ops, ``vmap`` levels and symbolic sizes
  (``_add_batch_dim`` of a proxy raises), and transformers' own tracer writes code that only
  its proxies can run (``x[:, 0:n]`` with ``n`` a proxy: "slice indices must be integers").
  A worker only runs the module, so it never needs the graph: here an fx module (any, at any
  depth: a higher-order op's body too) is sent as its generated Python source, the objects
  that source names (by reference: ``torch``, ``operator.getitem``, a library's function)
  and its module state (submodules, parameters, buffers, constants), and is loaded as a
  `ShippedFx` module that runs that code. This is what the fx module's own ``__reduce__``
  sends, without the re-trace. (``torch.export.save`` serializes a whole program, not the
  pieces graphexec cuts it into; re-importing the user's module on each worker would need its
  code there and a second, identical trace.)
* **Export's input guards** (the ``_guards_fn`` module of ``ExportedProgram.module()``)
  hold their check as a function wrapped in a Dynamo configuration context that does not
  pickle. `graphexec.trace` replaces them with `graphexec.exported.InputGuards` already; a
  guard module in a graph built by hand is sent the same way, its check function by value.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from ...exported import InputGuards, guards_class, unwrapped_check
from ...graph import Node, state_tensors

__all__ = ["NodeCopy", "ShippedFx", "UnsendableNodeError", "pack", "unpack"]


class UnsendableNodeError(TypeError):
    """A node that cannot be sent to a Dask worker: something in it does not pickle.

    ``node`` is the node's name, ``path`` where in it the object lies (``_guards_fn.forward``).
    """

    def __init__(self, message: str, node: str, path: str):
        super().__init__(message)
        self.node, self.path = node, path


# -- the packed form --------------------------------------------------------------------------
#: fx's own bookkeeping in a GraphModule's ``__dict__``: the graph and what is made from it,
#: and hooks on graph edits. A worker runs the code and needs none of it.
_FX_ONLY = frozenset({
    "_graph", "_code", "_lineno_map", "_prologue_start", "meta", "shape_env", "_tracer_cls",
    "_tracer_extras", "_create_node_hooks", "_deepcopy_hooks", "_erase_node_hooks",
    "_replace_hooks", "_graphmodule_graph_node_meta_stack_trace",
})  # fmt: skip


class ShippedFx(nn.Module):
    """A ``torch.fx.GraphModule`` as a worker gets it: its state and its generated
    ``forward``, no graph. The class is named after the module's (``add+ReLU``), so errors on
    the worker read as on the client. Pickled again (a worker's copy fetched by another
    worker), it travels the same way."""

    _classes: dict[tuple[str, bool], type[ShippedFx]] = {}

    src: str
    scope: dict[str, Any]

    @classmethod
    def named(cls, name: str, direct: bool) -> type[ShippedFx]:
        key = (name, direct)
        if key not in cls._classes:  # one class per name: isinstance and type() stay cheap
            cls._classes[key] = type(name, (cls,), {"graphexec_direct": direct})
        return cls._classes[key]


def _load_fx(name: str, direct: bool, src: str, scope: dict[str, Any], body: dict[str, Any]):
    module = ShippedFx.named(name, direct).__new__(ShippedFx.named(name, direct))
    module.__dict__.update(body)
    code = compile(src, f"<graphexec shipped {name}>", "exec", dont_inherit=True)
    namespace = dict(scope)
    exec(code, namespace)  # noqa: S102 - the fx module's own generated forward
    module.__dict__["forward"] = namespace["forward"].__get__(module)
    module.__dict__["src"], module.__dict__["scope"] = src, scope
    return module


def _reduce_fx(gm: nn.Module) -> tuple[Any, ...]:
    if isinstance(gm, ShippedFx):
        src, scope = gm.src, gm.scope
        body = {k: v for k, v in gm.__dict__.items() if k not in ("forward", "src", "scope")}
    else:
        code = gm._graph.python_code(root_module="self")
        src, scope = code.src, dict(code.globals)
        # Not sent either: instance functions over nn.Module's own methods (export's module()
        # sets train/eval to closures over itself, which raise: a worker never calls them).
        body = {k: v for k, v in gm.__dict__.items()
                if k not in _FX_ONLY and not (callable(v) and hasattr(nn.Module, k))}  # fmt: skip
    name = type(gm).__name__
    direct = bool(getattr(type(gm), "graphexec_direct", False))
    return (_load_fx, (name, direct, src, scope, body))


_GUARDS = guards_class()


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, fx.GraphModule | ShippedFx):
            return _reduce_fx(obj)
        if isinstance(obj, pytree.TreeSpec):  # an exported module's in/out structure
            try:  # torch's own format: unpickling LeafSpec objects warns in torch 2.13
                return (pytree.treespec_loads, (pytree.treespec_dumps(obj),))
            except Exception:  # noqa: BLE001 - a node type without a serialized name
                pass
        if _GUARDS is not None and isinstance(obj, _GUARDS):
            guards = InputGuards(unwrapped_check(obj.forward))
            guards.train(obj.training)
            return (_identity, (guards,))
        return super().reducer_override(obj)


def _identity(x: Any) -> Any:
    return x


def pack(obj: Any) -> bytes:
    """``obj`` pickled as it goes to a worker (module docstring); `unpack` loads it."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def unpack(data: bytes) -> Any:
    return pickle.loads(data)


# -- a node as scattered ------------------------------------------------------------------------
class NodeCopy:
    """A node as scattered to a worker: packed once on the client (`NodeCopy.of`), loaded on
    the worker. Its size, for Dask's memory accounting (spilling, pausing, the dashboard,
    ``client.nbytes``), is that of its weights, not of a small object."""

    __slots__ = ("node", "_packed")

    def __init__(self, node: Node, packed: bytes | None = None):
        self.node = node
        self._packed = packed

    @classmethod
    def of(cls, node: Node) -> NodeCopy:
        """Pack ``node`` now (or raise `UnsendableNodeError` naming it and the culprit)."""
        try:
            return cls(node, pack(node))
        except Exception as exc:  # noqa: BLE001 - whatever pickle raised, say where
            raise _unsendable(node, exc) from None

    def __reduce__(self) -> tuple[Any, ...]:
        packed = self._packed if self._packed is not None else pack(self.node)
        return (_load_copy, (packed,))

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sum(t.nbytes for t in state_tensors(self.node.fn))


def _load_copy(packed: bytes) -> NodeCopy:
    return NodeCopy(unpack(packed))  # the bytes are dropped: a peer gets a fresh pack


# -- naming what does not pickle ---------------------------------------------------------------
def _unsendable(node: Node, exc: Exception) -> UnsendableNodeError:
    path, culprit = _culprit(node.fn, "", depth=6)
    where = f"its {path[1:]}" if path else "its callable"
    what = f"{type(culprit).__qualname__}" + (
        f" {getattr(culprit, '__qualname__', '')}" if callable(culprit) else "")  # fmt: skip
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return UnsendableNodeError(
        f"DaskExecutor: node '{node.name}' cannot be sent to a worker: {where} ({what.strip()}) "
        f"does not pickle ({reason}). Make it picklable (define the function or class at the top "
        "level of a module the workers can import, or give the class __getstate__/__reduce__), "
        "or run this graph on a local executor (executor='threads')",
        node.name,
        path[1:],
    )


def _culprit(obj: Any, path: str, depth: int) -> tuple[str, Any]:
    """The deepest attribute, item or submodule of ``obj`` that does not pickle (by `pack`),
    as a dotted path from ``obj``; ``obj`` itself when none of its parts is to blame."""
    if depth == 0:
        return path, obj
    for name, part in _parts(obj):
        try:
            pack(part)
        except Exception:  # noqa: BLE001 - any failure: look inside it
            return _culprit(part, f"{path}.{name}", depth - 1)
    return path, obj


def _parts(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, nn.Module):
        state = {**obj._modules, **obj._parameters, **obj._buffers}
        rest = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
        return list({**state, **rest}.items())
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, list | tuple):
        return [(str(i), v) for i, v in enumerate(obj)]
    closure = getattr(obj, "__closure__", None)
    if closure:
        names = obj.__code__.co_freevars
        return [(n, c.cell_contents) for n, c in zip(names, closure, strict=False)]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return list(vars(obj).items())
    return []
