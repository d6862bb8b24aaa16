"""The ``graphexec`` command line: plan, run, picture and benchmark a graph named by a target.

What it decides
---------------
* **Targets.** ``TARGET`` is ``path/to/file.py:attr`` or ``package.module:attr``. ``attr`` is a
  `Graph`, an ``nn.Module`` (instance or class with no required arguments; traced with
  `graphexec.trace`), or a function with no required arguments returning either. A file is
  imported under its own module name with its folder put first on ``sys.path`` (before any
  Dask cluster starts, so embedded worker processes can import it too).
* **Inputs.** ``--input-shape 8,3,32,32`` (repeat it once per graph input) makes random
  ``float32`` inputs (on the device of the graph's parameters); otherwise the target module's
  ``example_inputs`` attribute is used: a tensor, a tuple of graph inputs, or a function with
  no arguments returning one of those.
* **Executors.** ``--executor auto`` is ``cuda`` when the graph's parameters are on a GPU (the
  target put them there), ``threads`` otherwise. ``cuda`` runs on plans made from parameter
  counts (host timings of GPU nodes measure launches); ``--workers`` is its stream count. Times
  synchronize the GPU, when one is in use, after each run.
* **Eager reference.** When ``attr`` is an ``nn.Module``, ``run``, ``bench`` and ``demo`` also
  run it eagerly, check the outputs agree and report times relative to it.
* **Errors.** Bad input (missing file, unknown attribute, bad executor, bad shape, a graph
  error, a failing node) prints one line ``graphexec <command>: error: ...`` on stderr and
  exits non-zero, never a traceback (``GRAPHEXEC_TRACEBACK=1`` shows it for debugging).
  Usage errors exit 2, everything else 1.

Commands (each has ``--help``)::

    plan  TARGET [--out plan.png|svg] [--dot FILE] [--measure]    print (and draw) the plan
    run   TARGET [--executor E] [--schedule S] [--address A] [--profile DIR]
    viz   TARGET [--out DIR]                 plan picture, Gantt, Chrome trace of one run
    bench TARGET [--executors a,b,c] [--repeat N] [--out DIR]     ratio table + comparison
    demo  [--out DIR] [--no-dask]            the README's walk-through on a built-in model
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn as nn

from .executors import EXECUTORS, make_executor
from .executors.base import SCHEDULES, Executor
from .executors.cuda import INLINE_BELOW, auto_choice
from .graph import Graph
from .planner import Plan
from .planner import plan as make_plan
from .profile import Trace
from .trace import trace as fx_trace

__all__ = ["main", "load_target", "CLIError"]


class CLIError(Exception):
    """A user mistake the CLI reports in one line (exit status 1)."""


@dataclass
class Target:
    """What a TARGET names: the graph, the eager module (if any) and its example inputs."""

    graph: Graph
    module: nn.Module | None
    example_inputs: tuple[Any, ...] | None
    spec: str


# -- targets and inputs -------------------------------------------------------------------------
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
    >>> t = load_target("graphexec.cli:demo_graph")
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
    return Target(graph, eager, _example_inputs(module, spec), spec)


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


def _example_inputs(module: Any, spec: str) -> tuple[Any, ...] | None:
    value = getattr(module, "example_inputs", None)
    if value is None:
        return None
    if callable(value):
        value = _call(value, f"{spec.rpartition(':')[0]}:example_inputs")
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` -> ``(8, 3, 32, 32)``.

    Raises
    ------
    CLIError
        Unless ``text`` is comma-separated positive integers.

    Examples
    --------
    >>> parse_shape("8, 3,32,32")
    (8, 3, 32, 32)
    """
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise CLIError(f"bad --input-shape {text!r}: expected positive integers like 8,3,32,32")
    return shape


def _inputs(args: argparse.Namespace, target: Target, required: bool = True) -> tuple | None:
    names = target.graph.inputs
    if args.input_shape:
        shapes = [parse_shape(s) for s in args.input_shape]
        if len(shapes) != len(names):
            raise CLIError(
                f"graph '{target.graph.name}' takes {len(names)} input(s) ({', '.join(names)}); "
                f"got {len(shapes)} --input-shape"
            )
        gen = torch.Generator().manual_seed(0)
        device = auto_choice(target.graph)[1].get("device", "cpu")
        return tuple(torch.randn(s, generator=gen).to(device) for s in shapes)
    if target.example_inputs is not None:
        return target.example_inputs
    if required:
        raise CLIError(
            f"no inputs for {target.spec}: give --input-shape (once per input: "
            f"{', '.join(names)}) or define example_inputs next to it"
        )
    return None


# -- running and timing -------------------------------------------------------------------------
def _resolve(name: str, graph: Graph) -> str:
    """``auto`` -> ``cuda`` or ``threads``, by where the graph's parameters are."""
    return auto_choice(graph)[0] if name == "auto" else name


def _executor(name: str, args: argparse.Namespace, graph: Graph | None = None) -> Executor:
    kw: dict[str, Any] = {"schedule": getattr(args, "schedule", "dataflow")}
    if name == "threads" and getattr(args, "workers", None):
        kw["workers"] = args.workers
    if name == "cuda":
        kw.update(auto_choice(graph)[1] if graph is not None else {})
        if getattr(args, "workers", None):
            kw["streams"] = args.workers
    if name == "dask":
        if getattr(args, "address", None):
            kw["address"] = args.address
        else:
            kw.update(n_workers=getattr(args, "workers", None) or 2, dashboard_address=":0")
    return make_executor(name, **kw)


def _time(fn: Callable[[], Any], repeat: int, tick: Callable[[], None] | None = None) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call (GPU work included)."""
    fn()
    samples = []
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - t0)
        if tick:
            tick()
    return statistics.median(samples)


def _time_against(
    fn: Callable[[], Any], reference: Callable[[], Any], repeat: int, ref_samples: list[float]
) -> float:
    """Median seconds of ``fn``, timed alternately with ``reference`` (whose times are added
    to ``ref_samples``), so that both see the same machine state: each run follows the other
    as often as not (a run at all intra-op threads leaves OpenMP workers spinning)."""
    fn()
    samples = []
    for i in range(repeat):
        for which in (fn, reference) if i % 2 else (reference, fn):
            _sync()
            t0 = time.perf_counter()
            which()
            _sync()
            (samples if which is fn else ref_samples).append(time.perf_counter() - t0)
    return statistics.median(samples)


def _sync() -> None:
    if torch.cuda.is_initialized():  # GPU work is asynchronous: wait for it before reading a clock
        torch.cuda.synchronize()


def _check(got: Any, expected: Any) -> str:
    try:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    except AssertionError as exc:
        raise CLIError(f"outputs differ from eager PyTorch: {str(exc).splitlines()[0]}") from exc
    return "outputs match eager PyTorch"


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _save_trace(trace: Trace, out: Path, tag: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"gantt_{tag}.png", out / f"trace_{tag}.json", out / f"summary_{tag}.txt"]
    trace.gantt(files[0])
    trace.to_chrome(files[1])
    files[2].write_text(trace.summary() + "\n", encoding="utf-8")
    return files


def _table(rows: Sequence[tuple[str, float]], base: str) -> str:
    ref = dict(rows)[base]
    lines = [f"{'':<24}{'median':>11}  vs {base}", "-" * (47 + len(base))]
    for label, seconds in rows:
        lines.append(f"{label:<24}{seconds * 1e3:>8.2f} ms  {ref / seconds:>6.2f}x")
    return "\n".join(lines)


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return None
    return tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)


# -- commands -----------------------------------------------------------------------------------
def _cmd_plan(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = _inputs(args, target, required=args.measure)
    plan = _plan(target, inputs if args.measure else None, args)
    print(plan)
    if args.out:
        plan.draw(args.out)
        print(f"plan picture: {args.out}")
    if args.dot:
        Path(args.dot).write_text(plan.to_dot(), encoding="utf-8")
        print(f"plan DOT: {args.dot}")
    return 0


def _plan(
    target: Target, inputs: tuple | None, args: argparse.Namespace, executor: str = "threads"
) -> Plan:
    fuse = not getattr(args, "no_fuse", False)
    with torch.no_grad():
        if executor == "cuda":  # host timings of GPU nodes measure launches: estimate instead
            return make_plan(target.graph, fuse_chains=fuse, inline_below=INLINE_BELOW)
        return make_plan(target.graph, inputs, fuse_chains=fuse)


def _cmd_run(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = _inputs(args, target)
    name = _resolve(args.executor, target.graph)
    plan = _plan(target, None, args, name)
    with torch.no_grad(), _executor(name, args, target.graph) as ex:
        out, trace = ex.run(plan, *inputs, profile=True)
        seconds = _time(lambda: ex.run(plan, *inputs), args.repeat) if args.repeat else trace.wall
        expected = target.module(*inputs) if target.module is not None else None
    picked = f"{args.executor} -> {name}" if name != args.executor else name
    print(f"{target.graph.name} on {picked} ({args.schedule}): {_shape(out)}")
    print(f"  wall {seconds * 1e3:.2f} ms" + (f" (median of {args.repeat})" if args.repeat else ""))
    if expected is not None:
        print("  " + _check(out, expected))
    if args.profile:
        print(trace.summary())
        files = _save_trace(trace, Path(args.profile), name)
        print("profile: " + ", ".join(str(f) for f in files))
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = _inputs(args, target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = _resolve(args.executor, target.graph)
    plan = _plan(target, inputs, args, name)  # costs measured on the inputs (CPU executors)
    plan.draw(out / "plan.png")
    (out / "plan.dot").write_text(plan.to_dot(), encoding="utf-8")
    with torch.no_grad(), _executor(name, args, target.graph) as ex:
        ex.run(plan, *inputs)  # warm-up: pools, caches, weights on workers
        _, trace = ex.run(plan, *inputs, profile=True)
    print(plan)
    print(trace.summary())
    files = [out / "plan.png", out / "plan.dot", *_save_trace(trace, out, name)]
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .viz import compare

    target = load_target(args.target)
    inputs = _inputs(args, target)
    names = [n.strip() for n in args.executors.split(",") if n.strip()]
    for n in names:
        if n not in (*EXECUTORS, "auto"):
            raise CLIError(f"unknown executor {n!r}; choose from {', '.join(EXECUTORS)}, auto")
    names = list(dict.fromkeys(_resolve(n, target.graph) for n in names))
    plans: dict[bool, Plan] = {}  # CUDA streams run on an estimated plan, the others measured

    def plan_for(name: str) -> Plan:
        cuda = name == "cuda"
        if cuda not in plans:
            plans[cuda] = _plan(target, inputs, args, name)
        return plans[cuda]

    plan = plan_for(names[0]) if names else _plan(target, inputs, args)
    rows: list[tuple[str, float]] = []
    traces: dict[str, Trace] = {}
    bar = _progress((len(names) + (target.module is not None)) * args.repeat, "graphexec bench")
    tick = bar.update if bar is not None else None
    try:
        with torch.no_grad():
            if target.module is not None:
                rows.append(
                    ("eager PyTorch", _time(lambda: target.module(*inputs), args.repeat, tick))
                )
            for name in names:
                p = plan_for(name)
                with _executor(name, args, target.graph) as ex:
                    rows.append(
                        (
                            f"{name} ({args.schedule})",
                            _time(lambda ex=ex, p=p: ex.run(p, *inputs), args.repeat, tick),
                        )
                    )
                    traces[name] = ex.run(p, *inputs, profile=True)[1]
    finally:
        if bar is not None:
            bar.close()
    print(plan)
    print(_table(rows, rows[0][0]))
    out = Path(args.out)
    compare(traces, out / "compare.png")
    print(f"comparison figure: {out / 'compare.png'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), repeat=args.repeat, dask=not args.no_dask)


# -- argument parsing ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphexec",
        description="Plan, run, picture and benchmark dataflow graphs of neural-network models.",
        epilog="TARGET is path/to/file.py:attr or package.module:attr; attr is a Graph, an "
        "nn.Module or a function returning one. Inputs: --input-shape (once per graph input) "
        "or the module's example_inputs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("target", metavar="TARGET", help="path/to/file.py:attr or pkg.mod:attr")
        p.add_argument(
            "--input-shape",
            action="append",
            metavar="SHAPE",
            help="random input of this shape, e.g. 8,3,32,32 (repeat once per graph input)",
        )
        p.add_argument("--no-fuse", action="store_true", help="one task per node (no fusion)")

    def executing(p: argparse.ArgumentParser, many: bool = False) -> None:
        if not many:
            p.add_argument("--executor", choices=(*EXECUTORS, "auto"), default="threads")
        p.add_argument("--schedule", choices=SCHEDULES, default="dataflow")
        p.add_argument("--address", help="Dask scheduler to join (default: a local cluster)")
        p.add_argument(
            "--workers", type=int, help="threads, CUDA streams, or local Dask worker processes"
        )

    p = command("plan", "print the plan of TARGET (and draw it with --out)", _cmd_plan)
    target(p)
    p.add_argument("--out", help="draw the plan to this file (.png or .svg)")
    p.add_argument("--dot", help="write Graphviz DOT text to this file")
    p.add_argument("--measure", action="store_true", help="measure costs on the inputs")

    p = command("run", "run TARGET once on an executor", _cmd_run)
    target(p)
    executing(p)
    p.add_argument("--repeat", type=int, default=0, help="also time N runs (median)")
    p.add_argument("--profile", metavar="DIR", help="write Gantt, Chrome trace, summary here")

    p = command("viz", "plan picture, Gantt chart and Chrome trace of one run", _cmd_viz)
    target(p)
    executing(p)
    p.add_argument("--out", default="out/viz", help="output folder (default out/viz)")

    p = command("bench", "the same graph on several executors: table and figure", _cmd_bench)
    target(p)
    executing(p, many=True)
    p.add_argument("--executors", default="sequential,threads", help="comma-separated")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per executor (median)")
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")

    p = command("demo", "plan, draw and run a multi-branch model on threads and Dask", _cmd_demo)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per row (median)")
    p.add_argument("--no-dask", action="store_true", help="skip the local Dask cluster")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``graphexec`` command line; return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on an error (reported in one line on stderr), 2 on a usage error.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "repeat", 1) < 0:
        parser.error("--repeat must be >= 0")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"graphexec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `graphexec plan ... | head`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("GRAPHEXEC_TRACEBACK"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = message if isinstance(exc, CLIError) else f"{type(exc).__name__}: {message}"
        print(f"graphexec {args.command}: error: {what}", file=sys.stderr)
        return 1


# -- the demo -----------------------------------------------------------------------------------
def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DemoNet(nn.Module):
    """A multi-branch model: a shared stem, three towers of different depth, a head.

    ::

        x -> stem -> tower_a (deep)   -\
                  -> tower_b (wide)   --> cat -> head
                  -> tower_c (small)  -/
    """

    def __init__(self, width: int = 512):
        super().__init__()
        self.stem = _mlp(width, width)
        self.tower_a = _mlp(width, 1024, 1024, 1024, 256)
        self.tower_b = _mlp(width, 2048, 256)
        self.tower_c = _mlp(width, 512, 256)
        self.head = nn.Linear(3 * 256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.cat([self.tower_a(h), self.tower_b(h), self.tower_c(h)], dim=1))


def demo_graph() -> Graph:
    """The demo's multi-branch model (`DemoNet`) traced into a graph.

    Examples
    --------
    >>> g = demo_graph()
    >>> g.inputs
    ('x',)
    """
    torch.manual_seed(0)
    return fx_trace(DemoNet().eval(), name="demo")


def run_demo(out: Path, repeat: int = 5, dask: bool = True, batch: int = 256) -> int:
    """The README's walk-through: plan, draw, run on threads and Dask, check, time, save.

    Parameters
    ----------
    out : Path
        Folder for the pictures, the Chrome traces and the summaries.
    repeat : int
        Timed runs per row of the table (median).
    dask : bool
        Also run on an embedded local Dask cluster (2 worker processes).
    batch : int
        Rows of the random input.

    Returns
    -------
    int
        0 when every run matched eager PyTorch.
    """
    from .viz import compare

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = DemoNet().eval()
    graph = fx_trace(model, name="demo")
    x = torch.randn(batch, 512)
    print(f"1. the model: {graph!r}\n")
    with torch.no_grad():
        plan = make_plan(graph, (x,))  # costs measured on this batch
        print(f"2. the plan (costs measured on a batch of {batch}):\n{plan}\n")
        plan.draw(out / "plan.png")
        (out / "plan.dot").write_text(plan.to_dot(), encoding="utf-8")
        expected = model(x)
        executors: list[tuple[str, Callable[[], Executor]]] = [
            ("sequential", lambda: make_executor("sequential")),
            ("threads (dataflow)", lambda: make_executor("threads")),
            ("threads (levels)", lambda: make_executor("threads", schedule="levels")),
        ]
        if dask:
            executors.append(
                (
                    "dask (2 workers)",
                    lambda: make_executor("dask", n_workers=2, dashboard_address=":0"),
                )
            )
        eager_samples: list[float] = []
        rows = []
        traces: dict[str, Trace] = {}
        print("3. running (each output checked against eager PyTorch):")
        failed = []
        for label, factory in executors:
            t0 = time.perf_counter()
            try:
                with factory() as ex:
                    got, trace = ex.run(plan, x, profile=True)
                    print(f"   {label:<20} {_check(got, expected)}")
                    seconds = _time_against(
                        lambda ex=ex: ex.run(plan, x), lambda: model(x), repeat, eager_samples
                    )
                    rows.append((label, seconds))
                    traces[label] = ex.run(plan, x, profile=True)[1]
            except Exception as exc:  # report, keep the other rows and pictures
                failed.append(label)
                line = (str(exc).strip().splitlines() or [""])[0]
                print(f"   {label:<20} FAILED: {type(exc).__name__}: {line}")
                continue
            if label.startswith("dask"):
                print(
                    f"   (cluster start, runs and shutdown took {time.perf_counter() - t0:.1f} s)"
                )
    rows.insert(0, ("eager PyTorch", statistics.median(eager_samples or [float("nan")])))
    print(
        f"\n4. timings, median of {repeat} runs, each executor alternating with eager "
        f"(higher is faster):\n{_table(rows, rows[0][0])}\n"
    )
    best = traces["threads (dataflow)"]
    print(f"5. what ran where (threads, dataflow):\n{best.summary()}\n")
    files = [out / "plan.png", out / "plan.dot"]
    for label, trace in traces.items():
        tag = label.split()[0] + ("_levels" if "levels" in label else "")
        files += _save_trace(trace, out, tag)
    compare(traces, out / "compare.png")
    files.append(out / "compare.png")
    print("6. pictures and traces (open trace_*.json in https://ui.perfetto.dev):")
    for f in files:
        print(f"   {f}")
    if failed:
        print(f"graphexec demo: error: {', '.join(failed)} failed (see above)", file=sys.stderr)
    return 1 if failed else 0
