"""The ``graphexec`` command line: plan, run, picture and benchmark a graph named by a target.

What it decides
---------------
* **Targets, inputs, the eager reference.** What ``TARGET`` may name, where inputs come from
  (``--input-shape`` or ``example_inputs``) and how runs are checked and timed against eager
  PyTorch (``run``, ``bench`` and ``demo``, when the target is an ``nn.Module``) is decided in
  `graphexec.targets`. The demo's model and walk-through live in `graphexec.demo`.
* **Executors.** ``--executor auto`` is ``cuda`` when the graph's parameters are on a GPU (the
  target put them there), ``threads`` otherwise. ``cuda`` runs on plans made from parameter
  counts (host timings of GPU nodes measure launches); ``--workers`` is its stream count. Times
  synchronize the GPU, when one is in use, after each run.
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
import importlib.metadata
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .demo import DemoNet, demo_graph, run_demo
from .executors import EXECUTORS, make_executor
from .executors.base import SCHEDULES, Executor
from .executors.cuda import auto_choice
from .executors.sequential import SequentialExecutor
from .graph import Graph
from .plans import Plan
from .policy import DEFAULT
from .profile import Timeline, median_run
from .targets import (
    CLIError,
    Target,
    UsageError,
    check_outputs,
    load_target,
    save_trace,
    target_inputs,
)
from .timing import MIN_ROUNDS, Speedup, paired, speedup_table, time_median
from .tune import plan as make_plan

# DemoNet and demo_graph are re-exported: docs and tests name graphexec.cli:demo_graph.
__all__ = ["main", "load_target", "CLIError", "DemoNet", "demo_graph"]


# -- executors and output ------------------------------------------------------------------------
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


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return None
    return tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)


# -- commands -----------------------------------------------------------------------------------
def _cmd_plan(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = target_inputs(target, args.input_shape, required=args.measure)
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
    kw: dict[str, Any] = {"fuse_chains": fuse} if fuse else {"fuse_chains": False, "hfuse": False}
    with torch.no_grad():
        if executor == "cuda":  # host timings of GPU nodes measure launches: estimate instead
            return make_plan(target.graph, inline_below=DEFAULT.gpu_inline_below, **kw)
        return make_plan(target.graph, inputs, **kw)


def _cmd_run(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = target_inputs(target, args.input_shape)
    name = _resolve(args.executor, target.graph)
    _check_address(args, [name])
    t0 = time.perf_counter()
    plan = _plan(target, inputs, args, name)  # as bench and viz: measured (CUDA: estimated)
    planned = time.perf_counter() - t0
    speedup = None
    with torch.no_grad(), _executor(name, args, target.graph) as ex:
        t0 = time.perf_counter()
        ex.run(plan, *inputs)  # the first call starts pools and sends weights to workers
        first = time.perf_counter() - t0
        out, trace = ex.run(plan, *inputs, profile=True)  # what a warm call does
        if args.repeat and target.module is not None:
            speedup = paired(lambda: ex.run(plan, *inputs), lambda: target.module(*inputs),
                             args.repeat)  # fmt: skip
        elif args.repeat:
            seconds = time_median(lambda: ex.run(plan, *inputs), args.repeat)
        expected = target.module(*inputs) if target.module is not None else None
    picked = f"{args.executor} -> {name}" if name != args.executor else name
    print(f"{target.graph.name} on {picked} ({args.schedule}): {_shape(out)}")
    how = "estimated from parameter counts" if name == "cuda" else "measured on the inputs"
    print(f"  planned in {planned:.2f} s (costs {how}); first call {first * 1e3:.2f} ms, "
          f"then {trace.wall * 1e3:.2f} ms (the profiled call)")  # fmt: skip
    if speedup is not None:
        print("  " + speedup_table([(picked, speedup)], "eager PyTorch").replace("\n", "\n  "))
    elif args.repeat:
        print(f"  median of {args.repeat} calls: {seconds * 1e3:.2f} ms")
    if expected is not None:
        print("  " + check_outputs(out, expected))
    if args.profile:  # the table's verdict, not a second one from the profiled call
        print(trace.summary(eager=speedup))
        files = save_trace(trace, Path(args.profile), name, eager=speedup)
        print("profile: " + ", ".join(str(f) for f in files))
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    inputs = target_inputs(target, args.input_shape)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = _resolve(args.executor, target.graph)
    _needs_pictures()
    _check_address(args, [name])
    plan = _plan(target, inputs, args, name)  # costs measured on the inputs (CPU executors)
    plan.draw(out / "plan.png")
    (out / "plan.dot").write_text(plan.to_dot(), encoding="utf-8")
    eager = None
    with torch.no_grad(), _executor(name, args, target.graph) as ex:
        ex.run(plan, *inputs)  # warm-up: pools, caches, weights on workers
        trace = median_run([ex.run(plan, *inputs, profile=True)[1] for _ in range(5)])
        if target.module is not None:  # the summary gives the paired rounds' verdict
            eager = paired(lambda: ex.run(plan, *inputs), lambda: target.module(*inputs), 5)
    print(plan)
    print(trace.summary(eager=eager))
    files = [out / "plan.png", out / "plan.dot", *save_trace(trace, out, name, eager=eager)]
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .viz import compare

    target = load_target(args.target)
    inputs = target_inputs(target, args.input_shape)
    names = [n.strip() for n in args.executors.split(",") if n.strip()]
    for n in names:
        if n not in (*EXECUTORS, "auto"):
            raise UsageError(f"unknown executor {n!r}; choose from {', '.join(EXECUTORS)}, auto")
    names = list(dict.fromkeys(_resolve(n, target.graph) for n in names))
    _needs_pictures()
    _check_address(args, names)
    plans: dict[bool, Plan] = {}  # CUDA streams run on an estimated plan, the others measured

    def plan_for(name: str) -> Plan:
        cuda = name == "cuda"
        if cuda not in plans:
            plans[cuda] = _plan(target, inputs, args, name)
        return plans[cuda]

    plan = plan_for(names[0]) if names else _plan(target, inputs, args)
    if target.module is not None:
        base, reference = "eager PyTorch", lambda: target.module(*inputs)
    else:  # a Graph target has no eager twin: the reference executor is the yardstick
        sequential = SequentialExecutor()
        base, reference = "sequential", lambda: sequential.run(plan, *inputs)
    rows: list[tuple[str, Speedup]] = []
    traces: dict[str, Timeline] = {}
    bar = _progress(len(names), "graphexec bench")
    try:
        with torch.no_grad():
            for name in names:
                p = plan_for(name)
                with _executor(name, args, target.graph) as ex:
                    speedup = paired(lambda ex=ex, p=p: ex.run(p, *inputs), reference,
                                     args.repeat)  # fmt: skip
                    # the sequential executor runs one task after another: no schedule to name
                    label = name if name == "sequential" else f"{name} ({args.schedule})"
                    rows.append((label, speedup))
                    traces[label] = median_run(
                        [ex.run(p, *inputs, profile=True)[1] for _ in range(5)]
                    )
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    print(plan)
    print(speedup_table(rows, base))
    out = Path(args.out)
    compare(traces, out / "compare.png", speedups=dict(rows), reference=base)
    print(f"comparison figure: {out / 'compare.png'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _needs_pictures()
    return run_demo(Path(args.out), repeat=args.repeat, dask=not args.no_dask)


def _needs_pictures() -> None:
    """Say that matplotlib is missing before minutes of planning and runs, not after."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError("this command draws pictures, which need matplotlib: "
                       "pip install 'graphexec[viz]'")  # fmt: skip


def _check_address(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Join the Dask scheduler of ``--address`` once before planning (seconds), so that an
    address that cannot be reached fails at once with the executor's own error."""
    if "dask" in names and getattr(args, "address", None):
        make_executor("dask", address=args.address).close()


# -- argument parsing ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:attr or pkg.mod:attr")
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="random input of this shape, e.g. 8,3,32,32, or 2,16:int64 for token ids "
        "(repeat once per graph input)",
    )
    p.add_argument(
        "--no-fuse",
        action="store_true",
        help="no chain or horizontal fusion: one task per node, except nodes too cheap to "
        "hand off (merge ops, reshapes), which are still folded into the node that reads them",
    )


def _executor_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    if not many:
        p.add_argument("--executor", choices=(*EXECUTORS, "auto"), default="threads",
                       help="where tasks run (default threads)")  # fmt: skip
    p.add_argument("--schedule", choices=SCHEDULES, default="dataflow",
                   help="dataflow: start tasks when ready; levels: barrier per level "
                        "(default dataflow)")  # fmt: skip
    p.add_argument("--address", help="Dask scheduler to join (default: a local cluster)")
    p.add_argument(
        "--workers", type=int, help="threads, CUDA streams, or local Dask worker processes"
    )


def _count(text: str) -> int:
    """``--repeat``: a non-negative integer (argparse reports anything else as usage)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


_count.__name__ = "non-negative integer"  # argparse: "invalid non-negative integer value: '-1'"


def _rounds(text: str, none: str = "") -> int:
    """``--repeat`` of ``bench`` and ``demo``: paired rounds, enough for a verdict
    (`graphexec.timing.MIN_ROUNDS`: with fewer, one disturbed round decides it)."""
    value = _count(text)
    if value < MIN_ROUNDS:
        raise argparse.ArgumentTypeError(
            f"{value} is too few rounds for a verdict: give at least {MIN_ROUNDS}{none} (the "
            "verdict reads the middle half of the rounds' speedups; with fewer, one disturbed "
            "round decides it)"
        )
    return value


def _rounds_or_none(text: str) -> int:
    """``--repeat`` of ``run``: 0 (time nothing) or enough rounds for a verdict."""
    return 0 if _count(text) == 0 else _rounds(text, none=", or 0 to time nothing")


_rounds.__name__ = _rounds_or_none.__name__ = _count.__name__


def _version() -> str:
    try:
        return importlib.metadata.version("graphexec")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphexec",
        description="Plan, run, picture and benchmark dataflow graphs of neural-network models.",
        epilog="TARGET is path/to/file.py:attr or package.module:attr; attr is a Graph, an "
        "nn.Module or a function returning one. Inputs: --input-shape (once per graph input) "
        "or the module's example_inputs.",
    )
    parser.add_argument("--version", action="version", version=f"graphexec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = command("plan", "print the plan of TARGET (and draw it with --out)", _cmd_plan)
    _target_args(p)
    p.add_argument("--out", help="draw the plan to this file (.png or .svg)")
    p.add_argument("--dot", help="write Graphviz DOT text to this file")
    p.add_argument("--measure", action="store_true", help="measure costs on the inputs")

    p = command("run", "run TARGET once on an executor", _cmd_run)
    _target_args(p)
    _executor_args(p)
    p.add_argument("--repeat", type=_rounds_or_none, default=0,
                   help="also time N calls, side by side with eager PyTorch for a module "
                        f"target (median, spread and verdict; 0 or at least {MIN_ROUNDS}; "
                        "default 0)")  # fmt: skip
    p.add_argument("--profile", metavar="DIR", help="write Gantt, Chrome trace, summary here")

    p = command("viz", "plan picture, Gantt chart and Chrome trace of one run", _cmd_viz)
    _target_args(p)
    _executor_args(p)
    p.add_argument("--out", default="out/viz", help="output folder (default out/viz)")

    p = command("bench", "the same graph on several executors: table and figure", _cmd_bench)
    _target_args(p)
    _executor_args(p, many=True)
    p.add_argument("--executors", default="sequential,threads", metavar="E1,E2,...",
                   help=f"comma-separated, from {', '.join((*EXECUTORS, 'auto'))} "
                        "(default sequential,threads)")  # fmt: skip
    p.add_argument("--repeat", type=_rounds, default=15,
                   help="timed rounds per executor, each against eager PyTorch (or the "
                        f"sequential executor for a graph target); at least {MIN_ROUNDS}, "
                        "default 15")  # fmt: skip
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")

    p = command(
        "demo",
        "plan, draw and run two multi-branch models on threads and Dask, and "
        "say whether graphexec was faster than eager PyTorch",
        _cmd_demo,
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument(
        "--repeat",
        type=_rounds,
        default=15,
        help=f"timed rounds per executor against eager PyTorch (at least {MIN_ROUNDS}; default 15)",
    )
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
        0 on success, 1 on an error (reported in one line on stderr), 2 on a usage error (an
        unknown command or flag, or a bad flag value), 130 on Ctrl-C.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
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
        return getattr(exc, "exit_status", 1)
