"""The module's own call: a traced graph also takes the call of the module it came from.

A trace may fix some of a module's arguments (Whisper's ``attention_mask=None`` between two
tensors: the graph has no input for it). `ModuleCall` records the module's leading positional
parameters and every fixed value (`Graph.accept_call` makes one, `graphexec.trace` says so
for the graphs it makes); `ModuleCall.bind` turns a call into the graph's own inputs
(`Graph.graph_call`, which executors and `GraphModule` call first): a fixed argument given as
it was fixed, by position or by name, is dropped; given another value, `ArityError` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ArityError, GraphError

__all__ = ["ModuleCall"]


@dataclass(frozen=True)
class ModuleCall:
    """How the module a graph was traced from is called, where the trace fixed some of its
    arguments: ``parameters`` are its leading positional parameters (graph inputs and fixed
    arguments, in order), ``fixed`` every fixed argument's value (`Graph.accept_call`).

    >>> call = ModuleCall.of("g", ["x", "ids"], ["x", "mask", "ids"], {"mask": None})
    >>> call.bind("g", ["x", "ids"], (1, None, 2), {})
    ((1, 2), {})
    """

    parameters: tuple[str, ...]
    fixed: Mapping[str, Any]

    @classmethod
    def of(cls, graph: str, inputs: Sequence[str], parameters: Sequence[str],
           fixed: Mapping[str, Any]) -> ModuleCall:  # fmt: skip
        """The call of graph ``graph`` (inputs ``inputs``), checked.

        Raises
        ------
        GraphError
            If a fixed argument is a graph input, or the parameters' inputs are not the
            graph's leading inputs in order.
        """
        fixed = dict(fixed)  # a plain dict: graphs are pickled
        given = [p for p in parameters if p not in fixed]
        clash = sorted(set(fixed) & set(inputs))
        if clash or given != list(inputs[: len(given)]):
            raise GraphError(
                f"graph '{graph}': the call ({', '.join(parameters)}; fixed "
                f"{', '.join(fixed)}) does not fit the inputs ({', '.join(inputs)})"
            )
        return cls(tuple(parameters), fixed)

    def bind(self, graph: str, inputs: Sequence[str], args: tuple[Any, ...],
             kwargs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:  # fmt: skip
        """A call's arguments as the graph's inputs (see `Graph.graph_call`).

        Raises
        ------
        ArityError
            If a fixed argument is given another value than the one it was fixed to.
        """
        kwargs = dict(kwargs)
        for name in [k for k in kwargs if k in self.fixed]:
            self._check(graph, name, kwargs.pop(name))
        n = len(inputs)
        if len(args) > len(self.parameters) or (
            len(args) <= n and not set(kwargs) & set(inputs[: len(args)])
        ):
            return args, kwargs
        kept = []
        for name, value in zip(self.parameters, args, strict=False):
            if name in self.fixed:
                self._check(graph, name, value)
            else:
                kept.append(value)
        return tuple(kept), kwargs

    def _check(self, graph: str, name: str, value: Any) -> None:
        fixed = self.fixed[name]
        if _same(value, fixed):
            return
        given = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                 else repr(value)[:80])  # fmt: skip
        raise ArityError(
            f"graph '{graph}': {name} is {given}, but the trace fixed {name}={fixed!r} "
            f"(the graph has no input '{name}'): pass {fixed!r} or leave it out, or import "
            "the module again with gx.trace giving it (a tensor in example_inputs; another "
            "value in concrete_args)",
            name,
        )


def _same(value: Any, fixed: Any) -> bool:
    """``value`` is the plain value a trace fixed (``None``, a bool, number or string)."""
    if value is fixed:
        return True
    if isinstance(value, torch.Tensor):
        return False
    numbers = isinstance(value, int | float) and isinstance(fixed, int | float)
    if type(value) is not type(fixed) and not (numbers and bool not in (type(value), type(fixed))):
        return False
    try:
        return bool(value == fixed)
    except Exception:  # noqa: BLE001 - a value that cannot be compared is not the fixed one
        return False
