"""How a node calls its function: list arguments packed back, and the checks made when a
node is declared (a class where an instance belongs, arity against the signature, in-place
modules without ``mutates=``).
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from .errors import ArityError, GraphError, InPlaceWarning

__all__ = ["Packed", "check_arity", "check_in_place", "check_instance", "fn_name", "spelled"]


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
    if not mutates and isinstance(fn, nn.Module) and getattr(fn, "inplace", False) is True:
        warnings.warn(
            f"node '{name}': {type(fn).__name__}(inplace=True) writes its input in place; "
            f"declare mutates=[0] so other readers of that tensor are ordered around it "
            f"(gx.trace does this itself)",
            InPlaceWarning,
            stacklevel=3,
        )


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


def fn_name(fn: Callable[..., Any]) -> str:
    if hasattr(fn, "__name__"):
        return fn.__name__
    return type(fn).__name__ if not hasattr(fn, "describe") else fn.describe()
