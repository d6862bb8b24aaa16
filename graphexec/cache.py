"""Measured decisions kept across processes: one plain JSON file per graph and machine.

Planning a real model measures it for a few dozen forward passes; a second process with the
same graph on the same machine should not pay that again. `graphexec.tune` stores what it
measured (node costs, the decisions and their words) under a key of everything the
measurements depend on, and rebuilds the plan from it:

* the graph's structure: node names, each callable's type, a module's hyper-parameters
  (``extra_repr``) and parameter shapes and dtypes, the edges (which value each node reads);
* the example inputs' shapes, dtypes and devices;
* the caller's grad mode and inference mode when planning: a call with grad enabled records
  autograd history and runs slower than one under ``no_grad`` or ``inference_mode``, so a
  decision made for one is not reused for the other (a training loop's plan and a server's);
* the planning options and margins, torch's version, its intra-op thread count, the CPU
  model and core count.

Where: ``GRAPHEXEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphexec``, else
``~/.cache/graphexec``. ``GRAPHEXEC_CACHE=0`` turns it off. Files are plain data (JSON), never
pickle: nothing in them is executed. A file that cannot be read, is not JSON, was written by
another format or holds another key (stale, corrupt or foreign) is ignored with a
`CacheWarning` and planning measures again; a directory that cannot be written costs a
warning, never an error. The drift check (`graphexec.drift`) guards a reused decision as it
guards a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .graph import Graph

__all__ = ["FORMAT", "CacheWarning", "directory", "key", "load", "store"]

#: The layout of a cache file: a file of another format is ignored (with a warning), and a
#: new format means new keys (2: the module untried against a plan with no lever; thread
#: counts tried on mean seconds; 3: a budget on the caller's thread, means only where a run
#: collapsed, exported graphs that cannot win untried; 4: decisions stored as records; 5: node
#: times at one thread too, for fusion's rule and a one-thread plan's costs). The
#: rules a decision was made by are in the key as the policy's digest (`graphexec.policy`):
#: a changed rule needs no new format.
FORMAT = 5


class CacheWarning(UserWarning):
    """A cache file was ignored (unreadable, not JSON, another format or key) or not written."""


def directory() -> Path | None:
    """Where measured decisions are kept, or None when ``GRAPHEXEC_CACHE=0``."""
    if os.environ.get("GRAPHEXEC_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    given = os.environ.get("GRAPHEXEC_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphexec"


def key(graph: Graph, example_inputs: Sequence[Any], options: Mapping[str, Any]) -> str:
    """A hex digest of everything a measured plan depends on (see the module docstring)."""
    text = json.dumps(describe(graph, example_inputs, options), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def describe(
    graph: Graph, example_inputs: Sequence[Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """The plain data `key` hashes."""
    return {
        "format": FORMAT,
        "nodes": [_node(n) for n in graph],
        "inputs": [_value(v) for v in example_inputs],
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "source": type(graph.source).__qualname__ if graph.source is not None else None,
        "options": dict(options),
        "torch": torch.__version__,
        "graphexec": _version(),
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "cpu": _cpu(),
    }


def _version() -> str:
    from ._version import __version__  # from below: the package face imports this module

    return __version__


def _node(n: Any) -> list[Any]:
    fn = n.fn
    what: list[Any] = [type(fn).__module__, type(fn).__qualname__]
    if isinstance(fn, nn.Module):
        for m in fn.modules():
            what += [type(m).__qualname__, m.extra_repr()]
        what += [(name, list(p.shape), str(p.dtype)) for name, p in fn.named_parameters()]
    else:
        what.append(getattr(fn, "__qualname__", None))
        text = repr(fn)
        what.append(text if " at 0x" not in text else None)  # no addresses: they differ
    refs = [(r.node, r.index) for r in n.inputs]
    kwargs = sorted((k, repr(v)[:80]) for k, v in n.kwargs.items()) if n.kwargs else []
    return [n.name, what, refs, kwargs]


def _value(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ["tensor", list(v.shape), str(v.dtype), str(v.device), v.requires_grad]
    if isinstance(v, (int, float, bool, str)) or v is None:
        return [type(v).__name__, v]
    if isinstance(v, (list, tuple)):
        return [type(v).__name__, [_value(x) for x in v]]
    return [type(v).__qualname__]


def _cpu() -> list[Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [model, os.cpu_count()]


def _path(digest: str) -> Path | None:
    where = directory()
    return None if where is None else where / f"plan-{digest}.json"


def load(digest: str) -> dict[str, Any] | None:
    """The record stored under ``digest``, or None (no file, cache off, or a bad file: a
    `CacheWarning` says which and why)."""
    path = _path(digest)
    if path is None or not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _ignored(path, f"not readable as JSON ({type(exc).__name__}: {exc})")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        return _ignored(path, f"another format ({got!r}, this graphexec writes {FORMAT})")
    if record.get("key") != digest:
        return _ignored(path, "written for another graph or machine (its key differs)")
    return record


def ignored(digest: str, why: str) -> None:
    """Warn that the record under ``digest`` was set aside (it did not fit the graph)."""
    path = _path(digest)
    if path is not None:
        _ignored(path, why)


def _ignored(path: Path, why: str) -> None:
    warnings.warn(
        f"graphexec cache file {path} ignored: {why}; measuring again", CacheWarning, stacklevel=3
    )
    return None


def store(digest: str, record: Mapping[str, Any]) -> Path | None:
    """Write ``record`` under ``digest`` (atomically: a reader sees the old file or the new
    one); the path written, or None when the cache is off or not writable (with a warning)."""
    path = _path(digest)
    if path is None:
        return None
    data = {**record, "format": FORMAT, "key": digest}
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".plan-", suffix=".tmp", delete=False, encoding="utf-8"
        ) as f:
            temp = f.name
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(temp, path)
    except (OSError, TypeError, ValueError) as exc:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)  # a half-written file is nobody's
        warnings.warn(f"graphexec cache: could not write {path}: {exc}", CacheWarning, stacklevel=2)
        return None
    return path
