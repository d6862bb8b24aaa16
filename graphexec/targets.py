"""What the command line runs and what it compares a run with: targets, inputs, eager PyTorch.

What it decides
---------------
* **Targets.** ``TARGET`` is ``path/to/file.py:attr`` or ``package.module:attr``. ``attr`` is a
  `Graph`, an ``nn.Module`` (instance or class with no required arguments; traced with
  `graphexec.fx_import`), or a function with no required arguments returning either. A file is
  imported under its own module name with its folder put first on ``sys.path`` and on
  ``PYTHONPATH`` (before any Dask cluster starts, so embedded worker processes can import it
  too).
* **Inputs.** ``--input-shape 8,3,32,32`` (once per graph input; ``2,16:int64`` for token ids)
  makes random inputs, seeded, on the device of the graph's parameters. Otherwise
  ``example_inputs``: the target's own attribute (``build_graph.example_inputs``,
  ``Model.example_inputs``), else its file's, which may be a dict by target name (a file
  with several targets whose inputs differ): a tensor, a tuple of graph inputs, or a function
  with no arguments returning one of those. Inputs whose count is not the graph's are an
  error naming where they came from, before anything runs.
* **Eager reference.** When ``attr`` is an ``nn.Module``, commands also run it eagerly: outputs
  must agree (`check_outputs`) and times are reported relative to it, side by side
  (`graphexec.timing`).
* **Errors.** Every user mistake here is a `CLIError`: the command line prints it in one line.

Used by `graphexec.cli` (the commands) and `graphexec.demo` (the walk-through).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .executors.cuda import auto_choice
from .fx_import import trace as fx_trace
from .graph import Graph
from .profile import Timeline
from .timing import Speedup

__all__ = [
    "CLIError",
    "UsageError",
    "Target",
    "load_target",
    "parse_shape",
    "target_inputs",
    "check_outputs",
    "save_trace",
]


class CLIError(Exception):
    """A user mistake the CLI reports in one line (exit status 1)."""

    exit_status = 1


class UsageError(CLIError):
    """A bad flag value (``--input-shape``, ``--executors``): exit status 2, as argparse's."""

    exit_status = 2


@dataclass
class Target:
    """What a TARGET names: the graph, the eager module (if any), its example inputs and
    where they were defined (for messages)."""

    graph: Graph
    module: nn.Module | None
    example_inputs: tuple[Any, ...] | None
    inputs_from: str
    spec: str


# -- targets ------------------------------------------------------------------------------------
def load_target(spec: str) -> Target:
    """Load ``path/to/file.py:attr`` or ``package.module:attr`` as a graph.

    Parameters
    ----------
    spec : str
        The target. ``attr`` may be dotted (``module:Model.small``).

    Returns
    -------
    Target
        The graph, the ``nn.Module`` it was traced from (or None) and the module's
        ``example_inputs`` (or None).

    Raises
    ------
    CLIError
        If the file or module cannot be found or imported, the attribute is missing, or it is
        not a Graph, an nn.Module or a function returning one.

    Examples
    --------
    >>> t = load_target("graphexec.demo:demo_graph")
    >>> t.graph.name, t.module is None
    ('demo', True)
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise CLIError(f"TARGET must be path/to/file.py:attr or package.module:attr, got {spec!r}")
    module = _import(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
            raise CLIError(
                f"{where} has no attribute {attr!r} (it has: {', '.join(names) or 'nothing'})"
            )
        obj = getattr(obj, part)
    graph, eager = _as_graph(obj, spec)
    return Target(graph, eager, *_example_inputs(obj, module, attr, spec), spec=spec)


def _import(where: str) -> Any:
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise CLIError(f"no such file: {where}")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # spawned Dask workers inherit sys.path
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (folder, os.environ.get("PYTHONPATH")) if p
            )
        name = path.stem
    else:
        name = where
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise CLIError(f"no module named {name!r}") from exc
        raise CLIError(f"cannot import {where}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CLIError(f"cannot import {where}: {type(exc).__name__}: {exc}") from exc


def _as_graph(obj: Any, spec: str) -> tuple[Graph, nn.Module | None]:
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        obj = _call(obj, spec)
    if isinstance(obj, Graph):
        return obj, None
    if isinstance(obj, nn.Module):
        module = obj.eval()
        try:
            return fx_trace(module), module
        except Exception as exc:
            raise CLIError(f"cannot trace {spec}: {type(exc).__name__}: {exc}") from exc
    if callable(obj):
        result = _call(obj, spec)
        if isinstance(result, (Graph, nn.Module)):
            return _as_graph(result, spec)
        raise CLIError(f"{spec}() returned a {type(result).__name__}, not a Graph or nn.Module")
    raise CLIError(
        f"{spec} is a {type(obj).__name__}, not a Graph, nn.Module or function returning one"
    )


def _call(fn: Callable[[], Any], spec: str) -> Any:
    try:
        return fn()
    except TypeError as exc:
        raise CLIError(f"cannot call {spec} without arguments: {exc}") from exc


def _example_inputs(obj: Any, module: Any, attr: str, spec: str) -> tuple[tuple | None, str]:
    """The target's own ``example_inputs`` attribute, else its file's: a value for every
    target there, or a dict with one value per target name (a file with several targets)."""
    where = spec.rpartition(":")[0]
    value, said = getattr(obj, "example_inputs", None), f"{spec}.example_inputs"
    if value is None:
        value, said = getattr(module, "example_inputs", None), f"{where}:example_inputs"
        if isinstance(value, dict):
            value, said = value.get(attr), f"{where}:example_inputs[{attr!r}]"
    if value is None:
        return None, ""
    if callable(value):
        value = _call(value, said)
    inputs = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return inputs, said


# -- inputs -------------------------------------------------------------------------------------
#: ``--input-shape SHAPE:DTYPE`` dtypes; integer inputs (token ids) are drawn from [0, 100).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
          "bool": torch.bool}  # fmt: skip


def parse_shape(text: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``"8,3,32,32"`` -> ``((8, 3, 32, 32), torch.float32)``; ``"2,16:int64"`` for token ids.

    Raises
    ------
    CLIError
        Unless ``text`` is comma-separated positive integers, optionally ``:`` and a dtype.

    Examples
    --------
    >>> parse_shape("8, 3,32,32")
    ((8, 3, 32, 32), torch.float32)
    >>> parse_shape("2,16:int64")
    ((2, 16), torch.int64)
    """
    dims, _, dtype = text.partition(":")
    try:
        shape = tuple(int(p) for p in dims.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"bad --input-shape {text!r}: expected positive integers like 8,3,32,32")
    if dtype and dtype not in DTYPES:
        raise UsageError(f"bad --input-shape {text!r}: dtype must be one of {', '.join(DTYPES)}")
    return shape, DTYPES[dtype or "float32"]


def _random(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    return torch.randint(0, 100, shape, generator=gen, dtype=dtype)


def target_inputs(
    target: Target, shapes: Sequence[str] | None, required: bool = True
) -> tuple | None:
    """Random inputs of the ``--input-shape`` ``shapes``, else the target's example inputs.

    Raises
    ------
    CLIError
        If the number of shapes is not the graph's number of inputs, a shape is malformed, or
        there are no inputs at all and ``required`` is set.
    """
    names = target.graph.inputs
    if shapes:
        parsed = [parse_shape(s) for s in shapes]
        if len(parsed) != len(names):
            raise UsageError(
                f"graph '{target.graph.name}' takes {len(names)} input(s) ({', '.join(names)}); "
                f"got {len(parsed)} --input-shape"
            )
        gen = torch.Generator().manual_seed(0)
        device = auto_choice(target.graph)[1].get("device", "cpu")
        return tuple(_random(shape, dtype, gen).to(device) for shape, dtype in parsed)
    if target.example_inputs is not None:
        given = target.example_inputs
        if len(given) != len(names):
            raise CLIError(
                f"{target.inputs_from} has {len(given)} input(s) but graph "
                f"'{target.graph.name}' takes {len(names)} ({', '.join(names)}): give "
                "--input-shape once per input, or example_inputs for this target (an "
                "attribute of it, or a dict by target name)"
            )
        return given
    if required:
        raise CLIError(
            f"no inputs for {target.spec}: give --input-shape (once per input: "
            f"{', '.join(names)}) or define example_inputs next to it"
        )
    return None


# -- against eager PyTorch ----------------------------------------------------------------------
def check_outputs(got: Any, expected: Any) -> str:
    """``"outputs match eager PyTorch"``, or a `CLIError` naming the first difference."""
    try:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    except AssertionError as exc:
        raise CLIError(f"outputs differ from eager PyTorch: {str(exc).splitlines()[0]}") from exc
    return "outputs match eager PyTorch"


def save_trace(trace: Timeline, out: Path, tag: str, eager: float | Speedup | None = None
               ) -> list[Path]:  # fmt: skip
    """Write a run's Gantt chart, Chrome trace and summary (compared with ``eager``: its
    seconds, or the paired rounds' `Speedup`, when known) into ``out``; return the files."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"gantt_{tag}.png", out / f"trace_{tag}.json", out / f"summary_{tag}.txt"]
    trace.gantt(files[0])
    trace.to_chrome(files[1])
    files[2].write_text(trace.summary(eager=eager) + "\n", encoding="utf-8")
    return files
