"""How a node calls its function: list arguments packed back, and the checks made when a
node is declared (a class where an instance belongs, arity against the signature, in-place
modules without ``mutates=``).

The arity check reads ``inspect.signature`` (30-100 µs a call): once per node it was most of
building a 100k-node graph. `Arity` reads it once per *kind* of callable instead, where a
kind is what the signature depends on: a module's class (its ``forward``), a plain function's
code, a callable object's class, and otherwise the callable itself. A failed check is made
again on the node's own callable by `check_arity`, so every error reads as it always did.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
import torch.nn as nn

from .errors import ArityError, GraphError, InPlaceWarning

__all__ = [
    "Arity", "Packed", "check_arity", "check_in_place", "check_instance", "fn_name", "spelled"
]  # fmt: skip


class Packed:
    """``fn`` called with some arguments grouped back into lists or tuples: what
    ``g.node(name, torch.cat, [a, b], dim=1)`` runs (its inputs travel as plain references).

    >>> import torch
    >>> p, flat = Packed.wrap(torch.cat, (["a", "b"],))
    >>> flat, p(torch.ones(1), torch.zeros(1)).tolist()
    (('a', 'b'), [1.0, 0.0])
    """

    def __init__(self, fn: Callable[..., Any], layout: tuple[tuple[type, int] | None, ...]):
        self.fn, self.layout = fn, layout
        self.cheap = bool(getattr(fn, "cheap", False))

    @classmethod
    def wrap(cls, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> tuple[Packed, tuple]:
        layout = tuple((type(r), len(r)) if isinstance(r, list | tuple) else None for r in inputs)
        flat = tuple(x for r in inputs for x in (r if isinstance(r, list | tuple) else (r,)))
        return cls(fn, layout), flat

    def __call__(self, *flat: Any, **kwargs: Any) -> Any:
        args, i = [], 0
        for group in self.layout:
            if group is None:
                args.append(flat[i])
                i += 1
            else:
                kind, n = group
                args.append(kind(flat[i : i + n]))
                i += n
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Packed({fn_name(self.fn)})"


def check_instance(name: str, fn: Any) -> None:
    """Raise `GraphError` for a class given where an instance belongs (``nn.ReLU`` for
    ``nn.ReLU()``).

    A class is callable, so it would pass as a node's function, and every call would build a
    new object from the node's inputs (an ``nn.ReLU`` module as the graph's output, say). The
    classes refused are those whose instances are what a node runs: ``nn.Module`` s, merge ops
    (``gx.mean``), any class whose instances are callable, and ``torch.autograd.Function`` s
    (called through ``.apply``). Other classes are conversions a node may well mean
    (``tuple``, ``float``), and functions such as ``torch.relu`` are no classes.

    >>> check_instance("a", nn.ReLU)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    graphexec.errors.GraphError: node 'a': nn.ReLU is a module class, ... nn.ReLU() ...
    """
    if not isinstance(fn, type):
        return
    shown = spelled(fn)
    if issubclass(fn, torch.autograd.Function):
        raise GraphError(
            f"node '{name}': {shown} is an autograd Function class: pass {shown}.apply, "
            "which runs it (calling the class builds an object of it)",
            name,
        )
    if issubclass(fn, nn.Module):
        what = "a module class, not a module"
    elif any("__call__" in vars(k) for k in fn.__mro__ if k is not object):
        what = "a class, not an instance"
    else:
        return
    raise GraphError(
        f"node '{name}': {shown} is {what}: pass an instance, {shown}() (with its "
        f"arguments); the class would build a new {shown} object from the node's inputs on "
        "every call",
        name,
    )


def spelled(cls: type) -> str:
    """``cls`` as a user writes it: ``nn.ReLU``, ``gx.mean``, else its qualified name."""
    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    package = sys.modules.get("graphexec")
    names = [*getattr(package, "__all__", ()), "tuple"]  # gx.tuple: public, not in __all__
    public = [n for n in names if getattr(package, n, None) is cls]
    return f"gx.{public[0]}" if public else cls.__qualname__


def check_in_place(name: str, fn: Any, mutates: tuple[int, ...]) -> None:
    """Warn about a module that says it writes its input in place with no ``mutates=``."""
    if not mutates and isinstance(fn, nn.Module) and _says_in_place(fn):
        warnings.warn(
            f"node '{name}': {type(fn).__name__}(inplace=True) writes its input in place; "
            f"declare mutates=[0] so other readers of that tensor are ordered around it "
            f"(gx.trace does this itself)",
            InPlaceWarning,
            stacklevel=3,
        )


def _says_in_place(module: nn.Module) -> bool:
    """``getattr(module, "inplace", False) is True``, without the slow miss through
    ``nn.Module.__getattr__`` (2-3 µs a node): where the class itself has no ``inplace`` and
    looks attributes up as ``nn.Module`` does, an ``inplace`` can only be the instance's own
    (``__getattr__`` finds parameters, buffers and submodules, never ``True``)."""
    cls = type(module)
    plain = _INPLACE_ON_INSTANCE.get(cls)
    if plain is None:
        plain = _INPLACE_ON_INSTANCE[cls] = (
            inspect.getattr_static(cls, "inplace", _UNREAD) is _UNREAD
            and cls.__getattr__ is nn.Module.__getattr__
            and cls.__getattribute__ is nn.Module.__getattribute__
        )
    if plain:
        return module.__dict__.get("inplace") is True
    return getattr(module, "inplace", False) is True


_INPLACE_ON_INSTANCE: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def check_arity(name: str, fn: Callable[..., Any], n: int, kwargs: Mapping[str, Any]) -> None:
    """Raise ArityError if ``fn`` surely cannot take ``n`` positional arguments."""
    target = fn.forward if isinstance(fn, nn.Module) else fn  # Module.__call__ is (*args)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    try:
        sig.bind(*range(n), **kwargs)
    except TypeError as exc:
        raise ArityError(
            f"node '{name}': {fn_name(fn)}{sig} cannot be called with {n} input"
            f"{'s' * (n != 1)}: {exc}",
            name,
        ) from None


#: What ``inspect.signature`` reads on a callable object before its class's ``__call__``: an
#: object with any of them (or a class with ``__getattr__``) may have a signature of its own.
_OWN_SIGNATURE = frozenset(
    ("__wrapped__", "__signature__", "_partialmethod", "__partialmethod__", "__code__",
     "__getattr__", "__getattribute__")
)  # fmt: skip
_UNREAD = object()


class Arity:
    """`check_arity` for the nodes of one graph, the signature read once per kind of callable.

    A kind (module docstring) is keyed by a class, a code object, or the callable's ``id``;
    callables keyed by ``id`` are held here, so an id is never reused while the graph lives.
    A binding that succeeded (kind, number of inputs, keyword names) is not tried again.
    Nothing is pickled or copied with it: a copy starts empty.

    >>> import torch.nn as nn
    >>> arity = Arity()
    >>> for i in range(3):
    ...     arity.check(f"lin{i}", nn.Linear(4, 4), 1, {})
    >>> len(arity)  # one signature read for three modules of one class
    1
    >>> arity.check("lin3", nn.Linear(4, 4), 2, {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    graphexec.errors.ArityError: node 'lin3': Linear(input: torch.Tensor) -> ... with 2 inputs: ...
    """

    def __init__(self) -> None:
        self._signatures: dict[Hashable, inspect.Signature | None] = {}
        self._bound: set[tuple[Hashable, int, frozenset[str]]] = set()
        self._held: dict[int, Any] = {}  # the callables keyed by id
        self._by_class: dict[type, bool] = {}

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()

    def __len__(self) -> int:
        """How many signatures were read."""
        return len(self._signatures)

    def check(self, name: str, fn: Callable[..., Any], n: int, kwargs: Mapping[str, Any]) -> None:
        """As `check_arity`; raises its `ArityError`, naming the node."""
        kind = self._kind(fn)
        bound = (kind, n, frozenset(kwargs))
        if bound in self._bound:
            return
        sig = self._signatures.get(kind, _UNREAD)
        if sig is _UNREAD:
            sig = self._signatures[kind] = _signature(fn)
        if sig is not None:
            try:
                sig.bind(*range(n), **kwargs)
            except TypeError:
                check_arity(name, fn, n, kwargs)  # the node's own callable says why
                return
        self._bound.add(bound)

    def _kind(self, fn: Any) -> Hashable:
        cls = type(fn)
        if cls is types.FunctionType:
            if fn.__defaults__ is None and fn.__kwdefaults__ is None and not fn.__dict__:
                return fn.__code__  # equal code, equal parameters (lambdas made in a loop)
        elif isinstance(fn, nn.Module):
            if "forward" not in fn.__dict__ and self._class_decides(cls, "forward"):
                return cls
        elif not isinstance(fn, type | functools.partial | types.MethodType):
            own = getattr(fn, "__dict__", None)  # None (slots): values inspect may read, unseen
            if (
                own is not None
                and own.keys().isdisjoint(_OWN_SIGNATURE)
                and self._class_decides(cls, "__call__")
            ):
                return cls
        self._held[id(fn)] = fn
        return id(fn)

    def _class_decides(self, cls: type, method: str) -> bool:
        """True if every instance of ``cls`` with none of `_OWN_SIGNATURE` of its own has the
        signature of ``cls``'s function ``method`` (a module: ``forward``, found on the class
        unless the instance sets its own; an object: ``__call__``, which inspect reads only
        when the object has none of `_OWN_SIGNATURE`)."""
        decides = self._by_class.get(cls)
        if decides is None:
            consulted = ("__getattribute__",) if method == "forward" else _OWN_SIGNATURE
            defined = isinstance(inspect.getattr_static(cls, method, None), types.FunctionType)
            overridden = any(n in vars(k) for k in cls.__mro__[:-1] for n in consulted)
            decides = self._by_class[cls] = defined and not overridden
        return decides


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    target = fn.forward if isinstance(fn, nn.Module) else fn  # Module.__call__ is (*args)
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return None


def fn_name(fn: Callable[..., Any]) -> str:
    if hasattr(fn, "__name__"):
        return fn.__name__
    return type(fn).__name__ if not hasattr(fn, "describe") else fn.describe()
