"""Set the calling thread's intra-op thread count for one call, and nothing else.

``torch.set_num_threads(k)`` does three things: it sets OpenMP's count of the calling thread
(OpenMP's ``nthreads-var`` is per thread), MKL's thread-local count, and a process default
that every thread reads on its first parallel op. Set and put back around a call, the third
leaks: a thread started elsewhere in the process during the call (a server's new worker, a
pool growing) starts at ``k`` and keeps it. So a budget that runs on the caller sets only the
two per-thread counts:

- OpenMP's, through ``omp_set_num_threads`` of the OpenMP runtime torch is linked against
  (the standard C API, found among the libraries the process has loaded; checked once:
  ``torch.get_num_threads()`` must follow it);
- MKL's thread-local count, through MKL's Fortran entry ``mkl_set_num_threads_local_``
  (Fortran passes by reference; it returns the count it replaced, 0 for "unset", which is
  put back). Once any thread has called ``torch.set_num_threads``, every thread started
  later has MKL's count pinned by torch, so OpenMP's alone would leave matrix products at
  the old count. Checked once (``mkl_get_max_threads()`` must follow); where it cannot be
  found, each call checks that MKL's count followed OpenMP's and declines if not.

Measured here (torch 2.13, OpenMP, MKL): setting and putting back costs about a microsecond,
where handing the call to a pool thread at that count and back cost 100-150 µs on a quiet
2-core machine and more with a core busy. Where `at_threads` declines (another parallel
backend, no OpenMP symbols, MKL's count pinned and no setter), the caller hands the call to a
lane (`graphexec.executors.base.BudgetLanes`).

>>> with at_threads(1) as done:
...     torch.get_num_threads() == 1 or not done
True
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

__all__ = ["at_threads"]

_RUNTIMES = ("libgomp", "libiomp5", "libomp")


class _Runtimes(NamedTuple):
    omp_set: Callable[[int], None]
    mkl_max: Callable[[], int] | None  # MKL's count on this thread
    mkl_local: Callable[[Any], int] | None  # MKL's Fortran setter: by reference, old count


@functools.lru_cache(maxsize=1)
def _setters() -> _Runtimes | None:
    """The per-thread setters of the runtimes torch uses, or None where they cannot be found
    or torch does not follow them."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:  # the libraries this process has loaded
            loaded = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return None
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    runtimes = sorted(
        (p for p in loaded if os.path.basename(p).startswith(_RUNTIMES)),
        key=lambda p: not p.startswith(torch_lib),  # torch's own copy first
    )
    mine = torch.get_num_threads()
    for path in runtimes:
        try:
            omp = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            setter = omp.omp_set_num_threads
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], None
        setter(mine + 1)
        follows = torch.get_num_threads() == mine + 1
        setter(mine)
        if follows and torch.get_num_threads() == mine:
            return _Runtimes(setter, *_mkl(torch_lib, mine))
    return None


def _mkl(torch_lib: str, mine: int) -> tuple[Callable[[], int] | None, Callable | None]:
    """MKL's ``mkl_get_max_threads`` and, if it works as its Fortran interface says, its
    thread-local setter; MKL is linked into torch's CPU library in the CPU wheels."""
    for name in ("libtorch_cpu.so", "libmkl_rt.so.2", "libmkl_rt.so"):
        try:
            lib = ctypes.CDLL(os.path.join(torch_lib, name), mode=os.RTLD_NOLOAD)
            get = lib.mkl_get_max_threads
        except (OSError, AttributeError):
            continue
        get.argtypes, get.restype = [], ctypes.c_int
        local = getattr(lib, "mkl_set_num_threads_local_", None)
        if local is None:
            return get, None
        local.argtypes, local.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int
        old = local(ctypes.byref(ctypes.c_int(mine + 1)))
        follows = get() == mine + 1
        local(ctypes.byref(ctypes.c_int(old)))
        return get, local if follows else None
    return None, None


@contextlib.contextmanager
def at_threads(threads: int) -> Iterator[bool]:
    """Run the block with this thread at ``threads`` intra-op threads, put back on every
    path; yields False (and changes nothing) where that cannot be done for this thread alone.
    """
    found = _setters()
    mine = torch.get_num_threads()  # also torch's lazy per-thread set-up, done before ours
    if found is None or mine == threads:
        yield mine == threads
        return
    found.omp_set(threads)
    old = None if found.mkl_local is None else found.mkl_local(ctypes.byref(ctypes.c_int(threads)))
    try:
        yield found.mkl_max is None or found.mkl_max() == threads  # else: pinned, no setter
    finally:
        if old is not None:
            found.mkl_local(ctypes.byref(ctypes.c_int(old)))
        found.omp_set(mine)
