"""Let ``import torchvision`` work in this repository's venv, where its C++ ops cannot load.

Why
---
``make`` installs the CPU wheel of torch 2.13 (constraints.txt: the CUDA build is several GB)
and the ``zoo`` extra installs PyPI's torchvision 0.28.0, the release for torch 2.13, which on
Linux is a CUDA build: its ``_C.so`` links ``libtorch_cuda.so``, which the CPU torch does not
ship, so it cannot load. torchvision expects that (its C++ ops such as ``torchvision.ops.nms``
then raise "Couldn't load custom C++ ops"), but ``torchvision/_meta_registrations.py``
registers kernels for ``torchvision::nms`` and ``torchvision::qnms`` unguarded, and
registering a kernel for an operator nobody defined fails the import::

    RuntimeError: operator torchvision::nms does not exist

timm imports torchvision, so it fails too. No CPU build of torchvision 0.28 is on PyPI, and the
matching pair PyPI has (torch 2.14.1 + torchvision 0.29.1) is a CUDA build of about 5.5 GB.

What
----
``make`` links this file into the venv's site-packages with a ``.pth`` line that imports it at
start-up (stdlib only: it costs nothing until torchvision is imported). When torchvision is
imported, just before its ``__init__`` runs, the two schemas its ``_C.so`` would define are
defined (no kernels) if that library cannot load, so the registrations go through. Models are
pure Python and never call these ops; calling one still fails loudly, as torchvision intends.
Where the library loads (a matching pair), or the schemas exist already
(``benchmarks.zoo.prepare_torchvision`` ran first), it does nothing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

_SCHEMAS = ("nms", "qnms")  # the operators torchvision's _meta_registrations needs defined
_libraries: list[Any] = []  # definitions live as long as their torch.library.Library


def define_missing_ops(package: Path) -> bool:
    """Define torchvision's ``nms``/``qnms`` schemas when its ``_C`` library in ``package``
    cannot load; True when it defined them."""
    import torch

    if _extension_loads(package) or hasattr(torch.ops.torchvision, "nms"):
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in _SCHEMAS:
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _libraries.append(lib)
    return True


def _extension_loads(package: Path) -> bool:
    import torch

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        lib = package / f"_C{suffix}"
        if lib.exists():
            try:
                torch.ops.load_library(str(lib))  # what torchvision itself does first
                return True
            except OSError:
                return False
    return False


class _Loader:
    """torchvision's own loader, with `define_missing_ops` run before its ``__init__``."""

    def __init__(self, loader: Any, package: Path):
        self._loader, self._package = loader, package

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        define_missing_ops(self._package)
        self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_data, get_resource_reader, ...
        return getattr(self._loader, name)


class _Finder:
    """Finds torchvision as the other finders do and wraps its loader; a mere probe
    (``importlib.util.find_spec``) defines nothing."""

    _busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torchvision" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        if spec is None or spec.loader is None or spec.origin is None:
            return spec
        spec.loader = _Loader(spec.loader, Path(spec.origin).parent)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
