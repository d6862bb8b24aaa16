"""The measurements: interleaved timing of contenders, dispatch overhead, planning, memory.

Timing discipline
-----------------
* Every contender is checked against eager (2 intra-op threads) before it is timed: every
  tensor of its output (any nesting of tuples, lists, dicts, model outputs; compared
  flattened, in order) must be close to eager's. A mismatch is recorded, not timed.
* All runs are under ``torch.inference_mode()`` (``grad_mode=`` of `time_workload`: the model
  zoo runs under ``torch.no_grad()``). Before each call the calling thread's
  intra-op thread count is set to the contender's (``torch.set_num_threads`` is per thread
  with the OpenMP backend, so pool threads keep their own budgets).
* Runs are interleaved: every repetition runs every contender once, in a freshly shuffled
  order (seeded), so drift in machine load hits all contenders alike and no contender always
  runs right after the same one. That matters: after a run at 2 intra-op threads, libgomp's
  worker thread spins for a while and takes a core from whatever runs next (measured: a
  contender always placed after eager ran about 30% slower than in isolation; a rotated order kept
  that adjacency). The figure is the median of ``reps`` runs after ``warmup`` untimed ones.

Memory is the rise of resident memory during one run, measured in a fresh subprocess per
(workload, contender): glibc is told to serve every allocation above 64 KiB with ``mmap``
(``MALLOC_MMAP_THRESHOLD_=65536``) so freed tensors leave RSS at once, the kernel's
high-water mark is reset (``/proc/self/clear_refs`` ← 5) after a warm-up run, and the peak
is ``VmHWM`` after the measured run minus ``VmRSS`` before it. (tracemalloc does not see
torch's CPU allocator; the torch profiler's memory view would, but RSS is what a user pays.)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

import graphexec as gx

from . import peers
from .workloads import Workload, build

__all__ = ["Contender", "Result", "contenders_for", "time_workload", "dispatch_overhead",
           "planning_time", "memory_peak", "guard", "module_contender",
           "ort_contenders", "max_abs_diff", "error_text"]  # fmt: skip

GradMode = Callable[[], AbstractContextManager]

REFERENCE = "eager 2 thr"


@dataclass
class Contender:
    """One way of computing a workload."""

    name: str
    fn: Callable[..., Any] | None
    threads: int = 2
    setup_s: float = 0.0
    error: str = ""
    close: Callable[[], None] | None = None
    note: str = ""  # e.g. what its setup warned about


@dataclass
class Result:
    """Median seconds per contender of one workload, plus setup times and errors."""

    workload: str
    title: str
    median: dict[str, float] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] = field(default_factory=dict)
    max_err: dict[str, float] = field(default_factory=dict)
    note: dict[str, str] = field(default_factory=dict)
    reps: int = 0
    #: Seconds of every timed run, in repetition order (one run per contender per round).
    samples: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float | None:
        ref = self.median.get(REFERENCE)
        got = self.median.get(name)
        return got / ref if ref and got else None

    def paired(self, name: str, base: str) -> float | None:
        """The median over repetitions of ``name``'s time over ``base``'s in the same one:
        runs moments apart, so a change of load between repetitions cancels out."""
        a, b = self.samples.get(name), self.samples.get(base)
        if not a or not b:
            return None
        return statistics.median(x / y for x, y in zip(a, b, strict=True))


def guard(name: str, threads: int, make: Callable[[], tuple[Any, float]]) -> Contender:
    """A contender from ``make() -> (fn, setup seconds)``; a failure becomes its error text."""
    try:
        fn, setup = make()
        return Contender(name, fn, threads, setup)
    except Exception as exc:  # a peer that fails here is a result, not a crash
        return Contender(name, None, threads, error=error_text(exc))


def error_text(exc: BaseException) -> str:
    """One line for a table: the exception's type and the first line of its message."""
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def contenders_for(
    w: Workload, compile_peers: bool = True, backends: bool = True
) -> list[Contender]:
    """Every contender of one workload (built while the calling thread has 2 threads)."""
    torch.set_num_threads(2)
    x = w.inputs
    out = [
        Contender("eager 1 thr", w.eager, 1),
        Contender(REFERENCE, w.eager, 2),
    ]
    gm = gx.GraphModule(w.graph)  # what a user gets without tuning
    out.append(Contender("gx default", gm, 2, close=gm.close))
    measured = gx.plan(w.graph, example_inputs=x)
    for sched in ("levels", "dataflow"):
        ex = gx.ThreadExecutor(schedule=sched)
        out.append(
            Contender(
                f"gx threads {sched}",
                lambda *a, ex=ex: ex.run(measured, *a),
                2,
                close=ex.close,
            )
        )

    # what horizontal fusion (on by default) is worth
    out.append(module_contender("gx default, hfuse off", w.graph, x, hfuse=False))
    if backends:
        out.extend(_backend_contenders(w))
    out.append(guard("TorchScript fork", 2, lambda: peers.torchscript_fork(w.fork, x)))
    out.extend(ort_contenders(w.eager, x))
    if compile_peers:
        out.append(guard("torch.compile", 2, lambda: peers.torch_compile(w.eager, x)))
    return out


def module_contender(
    name: str,
    graph: gx.Graph,
    inputs: tuple[Any, ...],
    grad_mode: GradMode = torch.inference_mode,
    **module_kwargs: Any,
) -> Contender:
    """``gx.GraphModule(graph, **module_kwargs)`` after its first call (which plans, measures
    and, with ``backend=``, exports): that call is the setup time."""
    gm: gx.GraphModule | None = None

    def make() -> tuple[Any, float]:
        nonlocal gm
        t0 = time.perf_counter()
        gm = gx.GraphModule(graph, **module_kwargs)
        with grad_mode():
            gm(*inputs)
        return gm, time.perf_counter() - t0

    c = guard(name, 2, make)
    if gm is not None:
        c.close = gm.close
    return c


def _backend_contenders(w: Workload) -> list[Contender]:
    """The default module plus the one documented switch: ``backend="onnxruntime"``."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return []
    return [module_contender("gx tasks onnxruntime", w.graph, w.inputs, backend="onnxruntime")]


def ort_contenders(
    module: torch.nn.Module, inputs: tuple[Any, ...], modes: tuple[str, ...] = ("seq", "par")
) -> list[Contender]:
    """Whole-model ONNX Runtime, one export shared by the sessions (``"seq"``, ``"par"``)."""
    try:
        model, export_s = peers.onnx_export(module, inputs)
    except Exception as exc:
        return [Contender(f"ORT {m}", None, error=error_text(exc)) for m in modes]
    out = []
    for mode in modes:

        def sess(par: bool = mode == "par") -> tuple[Any, float]:
            fn, s = peers.onnxruntime_session(model, par)
            return fn, s + export_s

        out.append(guard(f"ORT {mode}", 2, sess))
    return out


def max_abs_diff(got: Any, ref: Any) -> float:
    """Largest absolute difference over the tensors of two outputs, flattened in order.

    Raises
    ------
    ValueError
        When the outputs do not hold the same number of tensors, or their shapes differ.
    """
    a, b = _tensors(got), _tensors(ref)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} output tensors, eager has {len(b)}")
    err = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"output shape {tuple(x.shape)}, eager has {tuple(y.shape)}")
        err = max(err, (x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
    return err


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _close(got: Any, ref: Any, rtol: float, atol: float) -> bool:
    """All tensors allclose, in order (call after `max_abs_diff`, which checks the counts)."""
    pairs = zip(_tensors(got), _tensors(ref), strict=True)
    return all(torch.allclose(x.to(y.dtype), y, rtol=rtol, atol=atol) for x, y in pairs)


def time_workload(
    w: Workload,
    contenders: list[Contender],
    reps: int = 30,
    warmup: int = 3,
    grad_mode: GradMode = torch.inference_mode,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Result:
    """Check every contender against eager, then time them interleaved; medians in seconds.

    Every call runs under ``grad_mode()``; outputs must be ``allclose(rtol, atol)`` to eager's.
    """
    res = Result(w.key, w.title, reps=reps)
    with grad_mode():
        torch.set_num_threads(2)
        ref = w.eager(*w.inputs)
        live = []
        for c in contenders:
            res.setup[c.name] = c.setup_s
            if c.note:
                res.note[c.name] = c.note
            if c.fn is None:
                res.error[c.name] = c.error
                continue
            try:
                torch.set_num_threads(c.threads)
                got = c.fn(*w.inputs)
                err = max_abs_diff(got, ref)
                res.max_err[c.name] = err
                if not _close(got, ref, rtol, atol):
                    res.error[c.name] = f"output differs from eager (max abs err {err:.2e})"
                    continue
                for _ in range(warmup):
                    c.fn(*w.inputs)
                live.append(c)
            except Exception as exc:
                res.error[c.name] = error_text(exc)
        samples: dict[str, list[float]] = {c.name: [] for c in live}
        rng = random.Random(0)
        for _ in range(reps):
            order = live[:]
            rng.shuffle(order)  # who runs after whom changes: see the module docstring
            for c in order:
                torch.set_num_threads(c.threads)
                t0 = time.perf_counter()
                c.fn(*w.inputs)
                samples[c.name].append(time.perf_counter() - t0)
        torch.set_num_threads(2)
    res.median = {n: statistics.median(s) for n, s in samples.items()}
    res.samples = samples
    for c in contenders:
        if c.close is not None:
            c.close()
    return res


# -- dispatch overhead -------------------------------------------------------------------------
def _noop(t: Any) -> Any:
    return t


def dispatch_overhead(n: int = 400, reps: int = 15) -> dict[str, float]:
    """Seconds per task: inline and thread-dispatched no-op tasks, and the two peers.

    The graph is ``n`` independent no-op nodes over one input, each a graph output, so each is
    its own task; ``inline_below`` makes all of them inline (1 s) or all dispatched (0 s).
    """
    g = gx.Graph("noops")
    x = g.input("x")
    g.output(*[g.node(f"n{i}", _noop, x) for i in range(n)])
    t = torch.zeros(1)
    inline = gx.plan(g, inline_below=1.0)
    away = gx.plan(g, inline_below=0.0)
    ex = gx.ThreadExecutor()
    pool = ThreadPoolExecutor(2)

    def fork_all() -> Any:
        return _fork_noops(t, n)

    def pool_all() -> Any:
        return [f.result() for f in [pool.submit(_noop, t) for _ in range(n)]]

    cases = {
        "inline task": lambda: ex.run(inline, t),
        "thread task": lambda: ex.run(away, t),
        "torch.jit.fork+wait": fork_all,
        "ThreadPoolExecutor submit+result": pool_all,
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(reps):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) / n)
    ex.close()
    pool.shutdown()
    return {k: statistics.median(s) for k, s in samples.items()}


_FORK = None


def _fork_noops(t: torch.Tensor, n: int) -> Any:
    global _FORK
    if _FORK is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")

            def noop(x: torch.Tensor) -> torch.Tensor:
                return x

            def many(x: torch.Tensor, n: int) -> list[torch.Tensor]:
                futs = [torch.jit.fork(noop, x) for _ in range(n)]
                return [torch.jit.wait(f) for f in futs]

            _FORK = torch.jit.script(many)
    return _FORK(t, n)


# -- planning time -----------------------------------------------------------------------------
def random_dag(n: int, seed: int = 0, window: int = 64) -> gx.Graph:
    """A random DAG: node ``i`` adds one or two of the ``window`` nodes before it."""
    rng = random.Random(seed)
    g = gx.Graph(f"random{n}")
    names = [g.input("x").node]
    consumed: set[str] = set()
    op = gx.add()
    for i in range(n):
        k = rng.randint(1, 2)
        lo = max(0, len(names) - window)
        ins = {names[rng.randrange(lo, len(names))] for _ in range(k)}
        consumed |= ins
        names.append(g.node(f"v{i}", op, *sorted(ins)).node)
    g.output(*[m for m in names[1:] if m not in consumed])
    return g


def planning_time(n: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Seconds to build and to plan a random ``n``-node DAG (best of two plans)."""
    t0 = time.perf_counter()
    g = random_dag(n, seed)
    build_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        p = gx.plan(g)
        best = min(best, time.perf_counter() - t0)
    return {"nodes": n, "build_s": build_s, "plan_s": best, "tasks": len(p.tasks),
            "levels": len(p.levels)}  # fmt: skip


# -- memory ------------------------------------------------------------------------------------
MEMORY_CONTENDERS = ("eager", "gx sequential", "gx default", "gx threads dataflow")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(key: str, contender: str) -> dict[str, float]:
    torch.set_num_threads(2)
    w = build(key)
    if contender == "eager":
        fn: Callable[..., Any] = w.eager
    elif contender == "gx sequential":
        p = gx.plan(w.graph)
        fn = lambda *a: gx.SequentialExecutor().run(p, *a)  # noqa: E731
    elif contender == "gx default":
        fn = gx.GraphModule(w.graph)
    else:
        ex = gx.ThreadExecutor()
        p = gx.plan(w.graph)
        fn = lambda *a: ex.run(p, *a)  # noqa: E731
    with torch.inference_mode():
        out = fn(*w.inputs)
        del out
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kib("VmRSS")
        out = fn(*w.inputs)
        peak = _rss_kib("VmHWM")
    return {"peak_mib": (peak - before) / 1024, "out_mib": out.numel() * 4 / 2**20}


def memory_peak(key: str, contender: str) -> dict[str, float]:
    """Peak RSS rise (MiB) of one run, in a fresh subprocess (see the module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = (
        "import json,sys; from benchmarks.suite import _memory_child as m; "
        "print(json.dumps(m(sys.argv[1], sys.argv[2])))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", code, key, contender],
        capture_output=True, text=True, env=env, cwd=root, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr or traceback.format_exc()).strip().splitlines()[-1:]
        return {"error": " ".join(tail)}  # type: ignore[dict-item]
    return json.loads(proc.stdout.strip().splitlines()[-1])
