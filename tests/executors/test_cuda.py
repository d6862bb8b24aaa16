"""CudaStreamExecutor: the stream program as data (CPU), the interpreter, and the GPU tests.

Without a GPU, what can be checked is checked on the CPU: stream assignment and event wiring
as plan data, the happens-before checker (on hand graphs, on random DAGs, and on programs
broken on purpose), the interpreter's calls against a recording stand-in for ``torch.cuda``
(CPU tensors compute synchronously, so results are real), the capture key, and the errors.
Tests marked ``gpu`` run the real thing and are skipped with a reason where CUDA is missing.
"""

from __future__ import annotations

import dataclasses
import time
import types

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings

import graphexec as gx
from graphexec.executors.base import SCHEDULES, capture_modes
from graphexec.executors.cuda import (
    INPUTS,
    CaptureWarning,
    CudaUnavailableError,
    StreamOp,
    StreamProgram,
    capture_key,
    run_program,
    stream_program,
)
from graphexec.executors.cuda.capture import check_capturable
from tests import test_conformance as conformance

CUDA = torch.cuda.is_available()


def gpu(fn):
    """Needs a CUDA device: marked ``gpu`` and skipped with a reason without one."""
    skip = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available())")
    return pytest.mark.gpu(skip(fn))


def lin(d_in: int, d_out: int) -> nn.Module:
    return nn.Linear(d_in, d_out)


def diamond() -> gx.Graph:
    """
        x
       / \\
      a   half -> b        a is costlier: the critical path a -> sum keeps stream 0
       \\ /
       sum
    """
    g = gx.Graph("diamond")
    x = g.input("x")
    a = g.node("a", lin(512, 512), x)
    b = g.node("b", lin(256, 512), g.node("half", lambda t: t[:, :256], x))
    g.output(g.node("sum", gx.add(), a, b))
    return g


def branches(n: int = 4, width: int = 64) -> gx.Graph:
    """x -> b0..b{n-1} (b0 the costliest) -> cat -> head (one task: cat+head)"""
    g = gx.Graph("branches")
    x = g.input("x")
    outs = [g.node(f"b{i}", lin(width, width + (8 if i == 0 else 0)), x) for i in range(n)]
    g.output(g.node("head", lin(width * n + 8, 4), g.node("cat", gx.cat(dim=1), *outs)))
    return g


def op(program: StreamProgram, task: str) -> StreamOp:
    return next(o for o in program.ops if o.task == task)


# -- the program as data ------------------------------------------------------------------------
def test_chain_stays_on_the_callers_stream_without_events():
    g = gx.Graph("chain")
    h = g.input("x")
    for i in range(4):
        h = g.node(f"l{i}", lin(32, 32), h)
    g.output(h)
    for plan in (gx.plan(g), gx.plan(g, inline_below=0, fuse_chains=False)):
        program = stream_program(plan, streams=4)
        assert {o.stream for o in program.ops} == {0}
        assert program.n_waits == 0 and not program.fork and not program.join
        assert not any(o.record or o.record_stream for o in program.ops)
        program.check(plan)


def test_diamond_wiring():
    plan = gx.plan(diamond())
    program = stream_program(plan, streams=2)
    assert program.lanes == (("a", "sum"), ("half+b",))
    assert program.fork  # the side stream starts after the inputs are ready on stream 0
    assert op(program, "half+b") == StreamOp("half+b", 1, (INPUTS,), True, ("x",))
    assert op(program, "sum") == StreamOp("sum", 0, ("half+b",), False, ("b",))
    assert program.join == ()  # sum, on stream 0, already waited for the side stream
    assert program.to_caller == ()
    program.check(plan)


def test_one_stream_is_eager_order():
    plan = gx.plan(branches())
    program = stream_program(plan, streams=1)
    assert program.lanes == (tuple(plan.tasks),)
    assert program.n_waits == 0
    program.check(plan)


def test_branches_spread_over_side_streams_critical_path_on_stream_zero():
    plan = gx.plan(branches(4), inline_below=0)
    assert plan.critical_path[0] == "b0"
    program = stream_program(plan, streams=4)
    s = program.stream_of
    assert s["b0"] == 0 and {s["b1"], s["b2"], s["b3"]} == {1, 2, 3}
    assert s["cat+head"] == 0
    assert set(op(program, "cat+head").waits) == {"b1", "b2", "b3"}
    program.check(plan)
    two = stream_program(plan, streams=2)  # fewer streams than branches: they queue on one
    assert [two.stream_of[f"b{i}"] for i in range(4)] == [0, 1, 1, 1]
    assert op(two, "cat+head").waits == ("b3",)  # b1 and b2 are ordered before b3 on stream 1
    two.check(plan)


def test_inline_tasks_follow_their_input_stream():
    """
    x -> big -> bigger --------------.
    x -> small -> scale (inline) -> u -> out (inline, critical: stream 0)
                       `----------> v -'
    scale is cheap but has two consumers, so it stays a task: it runs on small's stream.
    """
    g = gx.Graph("follow")
    x = g.input("x")
    bigger = g.node("bigger", lin(256, 512), g.node("big", lin(256, 256), x))
    scale = g.node("scale", lambda t: t * 2, g.node("small", lin(256, 64), x))
    u, v = g.node("u", lin(64, 512), scale), g.node("v", lin(64, 512), scale)
    g.output(g.node("out", gx.add(), bigger, u, v))
    plan = gx.plan(g, fuse_chains=False)
    assert plan.tasks["scale"].inline and plan.tasks["out"].inline
    program = stream_program(plan, streams=3)
    assert program.stream_of["scale"] == program.stream_of["small"] != 0
    assert program.stream_of["out"] == 0
    assert op(program, "scale").waits == ()
    program.check(plan)


def test_transitively_implied_waits_are_dropped():
    """
    x -> crit ------------------------.
    x -> A -> B (both on stream 1) ----> C (stream 0) reads crit, A and B: one wait, for B
          `----------------------------'
    """
    g = gx.Graph("implied")
    x = g.input("x")
    crit = g.node("crit", lin(1024, 64), g.node("wide", lambda t: t.repeat(1, 16), x))
    a = g.node("A", lin(64, 64), x)
    b = g.node("B", lin(64, 64), a)
    g.output(g.node("C", lambda c, a, b: c + a + b, crit, a, b))
    plan = gx.plan(g, fuse_chains=False, inline_below=0)
    program = stream_program(plan, streams=3)
    assert program.stream_of["A"] == program.stream_of["B"] == 1
    assert program.stream_of["C"] == 0
    assert op(program, "C").waits == ("B",)
    assert op(program, "B").waits == () and not op(program, "A").record
    assert set(op(program, "C").record_stream) == {"A", "B"}  # each value it reads is marked
    program.check(plan)


def test_levels_schedule_adds_barriers_as_waits():
    """
    x -> a1 -> a2      levels: a2 waits for b1 and b2 for a1 (a barrier after level 0);
    x -> b1 -> b2      dataflow: the chains never wait for each other.
    """
    g = gx.Graph("two_chains")
    x = g.input("x")
    a2 = g.node("a2", lin(32, 32), g.node("a1", lin(32, 32), x))
    b2 = g.node("b2", lin(64, 64), g.node("b1", lin(32, 64), x))
    g.output(a2, b2)
    plan = gx.plan(g, fuse_chains=False, inline_below=0)
    assert plan.levels == (("a1", "b1"), ("a2", "b2"))
    flow = stream_program(plan, streams=2, schedule="dataflow")
    levels = stream_program(plan, streams=2, schedule="levels")
    side = flow.stream_of["a1"]
    assert side == 1 and flow.stream_of["b2"] == 0
    assert op(flow, "a2").waits == (INPUTS,) or op(flow, "a1").waits == (INPUTS,)
    assert "b1" not in op(flow, "a2").waits and "a1" not in op(flow, "b2").waits
    assert "b1" in op(levels, "a2").waits and "a1" in op(levels, "b2").waits
    assert flow.join == ("a2",) and flow.to_caller == ("a2",)
    flow.check(plan)
    levels.check(plan)
    with pytest.raises(ValueError, match="levels: task"):
        dataclasses.replace(flow, schedule="levels").check(plan)


def test_program_prints_one_row_per_task():
    program = stream_program(gx.plan(branches(3), inline_below=0), streams=3)
    text = str(program)
    assert text.startswith("StreamProgram (dataflow): 4 tasks on 3 of 3 streams")
    assert "s1  b1 | wait <inputs> | record_stream x | record" in text
    assert "s0  cat+head | wait b1, b2 | record_stream b1, b2" in text
    assert len(text.splitlines()) == 1 + 1 + 4  # header, fork, one row per task


def test_bad_arguments():
    plan = gx.plan(diamond())
    with pytest.raises(ValueError, match="streams must be >= 1"):
        stream_program(plan, streams=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        stream_program(plan, schedule="eager")


# -- the checker catches broken programs --------------------------------------------------------
def _without(program: StreamProgram, task: str, **changes) -> StreamProgram:
    ops = tuple(dataclasses.replace(o, **changes) if o.task == task else o for o in program.ops)
    return dataclasses.replace(program, ops=ops)


def test_checker_catches_a_removed_wait():
    plan = gx.plan(diamond())
    program = stream_program(plan, streams=2)
    with pytest.raises(ValueError, match="'sum' .* may start before its dependency 'half\\+b'"):
        _without(program, "sum", waits=()).check(plan)
    with pytest.raises(ValueError, match="may start before the fork"):
        _without(program, "half+b", waits=()).check(plan)


def test_checker_catches_missing_record_join_marks_and_order():
    plan = gx.plan(branches(2), inline_below=0)
    program = stream_program(plan, streams=2)
    with pytest.raises(ValueError, match="'b1'.s event, which is never recorded"):
        _without(program, "b1", record=False).check(plan)
    with pytest.raises(ValueError, match="without record_stream"):
        _without(program, "cat+head", record_stream=()).check(plan)
    with pytest.raises(ValueError, match="fork event, which is never recorded"):
        dataclasses.replace(program, fork=False).check(plan)
    swapped = dataclasses.replace(program, ops=program.ops[::-1])
    with pytest.raises(ValueError, match="before it is recorded|enqueued before its dependency"):
        swapped.check(plan)
    with pytest.raises(ValueError, match="never enqueued"):
        dataclasses.replace(program, ops=program.ops[:-1]).check(plan)
    outputs = gx.Graph("side_output")
    x = outputs.input("x")
    outputs.output(outputs.node("big", lin(256, 256), x), outputs.node("small", lin(256, 8), x))
    p2 = gx.plan(outputs, inline_below=0)
    prog2 = stream_program(p2, streams=2)
    assert prog2.join == ("small",) and prog2.to_caller == ("small",)
    with pytest.raises(ValueError, match="is not joined into stream 0"):
        dataclasses.replace(prog2, join=()).check(p2)
    with pytest.raises(ValueError, match="output 'small' is made on a side stream"):
        dataclasses.replace(prog2, to_caller=()).check(p2)


def test_the_checker_imports_nothing_of_the_module_it_checks():
    """streams.py -> stream_check.py, one way: not even a type hint points back (issue 20)."""
    import ast
    import inspect

    from graphexec.executors.cuda import stream_check

    tree = ast.parse(inspect.getsource(stream_check))
    imported = [(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.endswith("streams")], imported


# -- random DAGs --------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conformance.random_dags())
def test_random_programs_are_safe_and_every_wait_is_needed(dag):
    n_inputs, specs, seed = dag
    torch.manual_seed(seed)
    g, _ = conformance.build_random(n_inputs, specs)
    for plan in (gx.plan(g), gx.plan(g, inline_below=0, fuse_chains=False)):
        for schedule in SCHEDULES:
            for streams in (1, 2, 3, 5):
                program = stream_program(plan, streams, schedule)
                program.check(plan)
                for o in program.ops:  # no wait is implied by the others: dropping one breaks it
                    for w in o.waits:
                        kept = tuple(x for x in o.waits if x != w)
                        with pytest.raises(ValueError, match="may start before"):
                            _without(program, o.task, waits=kept).check(plan)
                for w in program.join:
                    broken = dataclasses.replace(
                        program, join=tuple(x for x in program.join if x != w)
                    )
                    with pytest.raises(ValueError, match="not joined"):
                        broken.check(plan)


# -- the interpreter, against a recording stand-in for torch.cuda -------------------------------
class FakeStream:
    def __init__(self, index: int, log: list):
        self.index, self.log = index, log

    def wait_event(self, event) -> None:
        self.log.append(("wait", event, self.index))

    def wait_stream(self, other) -> None:
        self.log.append(("wait_stream", other.index, self.index))

    def synchronize(self) -> None:
        self.log.append(("synchronize", self.index))


class FakeEvent:
    def __init__(self, enable_timing: bool = False):
        self.timing, self.at = enable_timing, None

    def record(self, stream) -> None:
        self.at = time.perf_counter()
        if not self.timing:
            stream.log.append(("record", self, stream.index))

    def elapsed_time(self, end) -> float:
        return (end.at - self.at) * 1e3


def fake_cuda(streams: int) -> tuple[types.SimpleNamespace, list[FakeStream], list]:
    """What `run_program` uses of ``torch.cuda`` (``Event``, ``set_stream``), recording calls.

    CPU tensors compute synchronously, so results are real; only the stream and event calls
    are recorded, to be compared with the program.
    """
    log: list = []

    def set_stream(s):
        log.append(("run", s.index))

    return (
        types.SimpleNamespace(Event=FakeEvent, set_stream=set_stream),
        [FakeStream(i, log) for i in range(streams)],
        log,
    )


def readable(log: list, program: StreamProgram) -> list[tuple]:
    """Name each event by what it was recorded after (a task, or the fork)."""
    ops, last, names, out = iter(program.ops), {}, {}, []
    for entry in log:
        if entry[0] == "run":
            task = next(ops, None)
            if task is None:  # after the last task: the caller's stream made current again
                out.append(("restore", entry[1]))
                continue
            last[entry[1]] = task.task
            out.append(("run", task.task, entry[1]))
        elif entry[0] == "record":
            names[id(entry[1])] = last.get(entry[2], INPUTS)
            out.append(("record", names[id(entry[1])], entry[2]))
        elif entry[0] == "wait":
            out.append(("wait", names[id(entry[1])], entry[2]))
        else:
            out.append(entry)
    return out


def expected(program: StreamProgram) -> list[tuple]:
    out = [("record", INPUTS, 0)] if program.fork else []
    for o in program.ops:
        out += [("wait", w, o.stream) for w in o.waits] + [("run", o.task, o.stream)]
        out += [("record", o.task, o.stream)] if o.record else []
    return out + [("restore", 0)] + [("wait", w, 0) for w in program.join]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_interpreter_enqueues_the_program_and_frees_values(schedule):
    g = conformance.build_random(2, [("linear", [0], 0), ("split", [1], 0), ("linear", [2], 1),
                                     ("add", [3, 4, 1], 1), ("catlin", [5, 2], 0)])[0]  # fmt: skip
    plan = gx.plan(g, inline_below=0, fuse_chains=False)
    program = stream_program(plan, 3, schedule)
    cuda, streams, log = fake_cuda(3)
    xs = (torch.randn(3, conformance.D), torch.randn(3, conformance.D))
    env = dict(zip(g.inputs, xs, strict=True))
    events: list[gx.TaskEvent] = []
    with torch.no_grad():
        run_program(plan, program, env, streams, events, cuda=cuda)
        reference = gx.SequentialExecutor().run(plan, *xs)
    assert readable(log[:-1], program) == expected(program)
    assert log[-1] == ("synchronize", 0)  # once, at the end, only when profiling
    outputs = {r.node for r in g.output_refs()}
    assert set(env) == outputs  # every intermediate (and input) was dropped at its last use
    conformance.assert_same(gx.executors.base.collect_outputs(g, env), reference, exact=True)
    assert sorted(e.task for e in events) == sorted(plan.tasks)
    assert {e.lane for e in events} == {f"stream {s}" for s in program.stream_of.values()}
    assert all(e.start <= e.end for e in events)


def test_interpreter_generates_each_task_program_once_per_plan(monkeypatch):
    """Task programs come from the executor's per-plan `Schedule`: generating them on every
    call cost 0.26 ms per task on a GPU at batch 1 (GoogLeNet-like: 2.5x eager's time)."""
    from graphexec.executors import schedule as schedule_module

    made = []
    real = schedule_module.task_program
    monkeypatch.setattr(schedule_module, "task_program", lambda *a: made.append(a) or real(*a))
    plan = gx.plan(branches(3), inline_below=0)
    program = stream_program(plan, streams=3)
    cuda, streams, _ = fake_cuda(3)
    sched = schedule_module.Schedule(plan)
    with torch.no_grad():
        for _ in range(3):
            run_program(plan, program, {"x": torch.randn(2, 64)}, streams, cuda=cuda,
                        schedule=sched)  # fmt: skip
    assert len(made) == len(plan.tasks)


def test_interpreter_error_names_the_node_and_orders_the_caller_after_side_streams():
    g = gx.Graph("fails")
    x = g.input("x")
    bad = g.node("bad", lambda t: t[:, 10_000], g.node("side", lin(8, 8), x))
    main = g.node("main", nn.Sequential(lin(8, 512), lin(512, 8)), x)
    g.output(g.node("out", gx.add(), main, bad))
    plan = gx.plan(g, inline_below=0, fuse_chains=False)
    program = stream_program(plan, streams=3)
    assert program.stream_of["bad"] != 0
    cuda, streams, log = fake_cuda(3)
    with pytest.raises(gx.NodeError, match="node 'bad'") as err:
        run_program(plan, program, {"x": torch.randn(2, 8)}, streams, cuda=cuda)
    assert isinstance(err.value.__cause__, IndexError)
    assert log[-3:] == [("run", 0), ("wait_stream", 1, 0), ("wait_stream", 2, 0)]


# -- capture key and capture guards (no GPU needed) --------------------------------------------
def test_capture_key_is_the_input_signature_and_modes():
    g = gx.Graph("g")
    x, n = g.input("x"), g.input("n")
    g.output(g.node("pow", torch.pow, x, n))
    p = gx.plan(g)
    key = capture_key(p, {"x": torch.ones(2, 3), "n": 2}, capture_modes())
    assert key == capture_key(p, {"x": torch.zeros(2, 3), "n": 2}, capture_modes())
    assert key != capture_key(p, {"x": torch.ones(4, 3), "n": 2}, capture_modes())
    assert key != capture_key(p, {"x": torch.ones(2, 3).double(), "n": 2}, capture_modes())
    assert key != capture_key(p, {"x": torch.ones(2, 3), "n": 3}, capture_modes())
    with torch.no_grad():
        assert key != capture_key(p, {"x": torch.ones(2, 3), "n": 2}, capture_modes())
    with pytest.raises(TypeError, match="graph input 'n' is a list"):
        capture_key(p, {"x": torch.ones(2), "n": [2]}, capture_modes())


def test_capture_refuses_cpu_inputs_and_writes_to_graph_inputs():
    g = gx.Graph("inplace")
    x = g.input("x")
    g.output(g.node("add_", lambda t: t.add_(1), x, mutates=[0]))
    p = gx.plan(g)
    with pytest.raises(ValueError, match="graph input 'x' is on cpu, not cuda:0"):
        check_capturable(p, {"x": torch.ones(2)}, torch.device("cuda", 0))
    with pytest.raises(ValueError, match="node 'add_' writes graph input 'x' in place"):
        check_capturable(p, {"x": torch.ones(2)}, torch.device("cpu"))


# -- without CUDA: clear errors, and "auto" picks threads ---------------------------------------
@pytest.mark.skipif(CUDA, reason="checks the error raised where CUDA is missing")
def test_without_cuda_the_error_suggests_threads():
    for make in (gx.CudaStreamExecutor, lambda: gx.make_executor("cuda")):
        with pytest.raises(CudaUnavailableError, match="gx.ThreadExecutor") as err:
            make()
        assert isinstance(err.value, RuntimeError)


def test_auto_picks_threads_for_cpu_parameters():
    g = diamond()
    with gx.GraphModule(g, executor="auto") as gm:
        assert isinstance(gm.executor, gx.ThreadExecutor)
        x = torch.randn(4, 512)
        with torch.no_grad():
            ref = gx.SequentialExecutor().run(gx.plan(g), x)
            torch.testing.assert_close(gm(x), ref, rtol=1e-5, atol=1e-5)
        assert isinstance(gm.executor, gx.ThreadExecutor)
    assert isinstance(gx.make_executor("auto", graph=g), gx.ThreadExecutor)
    with pytest.raises(ValueError, match="pass graph="):
        gx.make_executor("auto")


def test_cli_auto_runs_on_threads_and_cuda_errors_in_one_line():
    from tests.test_cli import TOWERS, graphexec

    r = graphexec("run", TOWERS, "--executor", "auto")
    assert r.returncode == 0, r.stderr
    assert "on auto -> threads (dataflow)" in r.stdout
    if not CUDA:
        r = graphexec("run", TOWERS, "--executor", "cuda")
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "gx.ThreadExecutor" in r.stderr


# -- on a GPU -----------------------------------------------------------------------------------
CONFORMANCE = [
    conformance.test_chain,
    conformance.test_diamond,
    conformance.test_wide_fan_out_stack_mean,
    conformance.test_inception_block_with_cat,
    conformance.test_multi_output_node_and_several_outputs,
    conformance.test_tuple_output_and_input_passthrough,
]


@gpu
@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CONFORMANCE, ids=lambda f: f.__name__[5:])
def test_conformance_graphs_on_streams(case, schedule, streams):
    """The conformance suite's hand graphs, built on the GPU, equal sequential and eager."""
    with torch.device("cuda"), gx.CudaStreamExecutor(streams=streams, schedule=schedule) as ex:
        case(ex)


@gpu
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_random_dags_on_streams(schedule):
    with torch.device("cuda"), gx.CudaStreamExecutor(streams=3, schedule=schedule) as ex:
        conformance.test_random_dags(ex)


@gpu
@pytest.mark.parametrize("capture", [False, True])
def test_equal_over_100_runs_with_fresh_inputs(capture):
    """A moving error would be a race: every run equals sequential on its own fresh input."""
    with torch.device("cuda"):
        g = branches(8, width=256)
    plan = gx.plan(g, inline_below=0)
    seq = gx.SequentialExecutor()
    with gx.CudaStreamExecutor(streams=4, capture=capture) as ex, torch.no_grad():
        for _ in range(100):
            x = torch.randn(8, 256, device="cuda")
            torch.testing.assert_close(ex.run(plan, x), seq.run(plan, x))


def sleeper(cycles: int):
    def sleep(t):
        torch.cuda._sleep(cycles)  # one spinning block: leaves room for concurrent kernels
        return t + 1

    return sleep


@gpu
def test_independent_kernels_overlap_and_lanes_are_streams():
    g = gx.Graph("sleepers")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *(g.node(f"s{i}", sleeper(2_000_000), x) for i in range(4))))
    plan = gx.plan(g, inline_below=0)
    x = torch.zeros(4, device="cuda")
    with gx.CudaStreamExecutor(streams=4) as ex:
        ex.run(plan, x)  # warm-up
        out, trace = ex.run(plan, x, profile=True)
    assert out.tolist() == [4.0] * 4
    sleeps = [e for e in trace.events if e.task != "sum"]
    assert len(sleeps) == 4
    assert {e.lane for e in sleeps} == {"stream 0", "stream 1", "stream 2", "stream 3"}
    assert max(e.start for e in sleeps) < min(e.end for e in sleeps), trace.summary()
    with gx.CudaStreamExecutor(streams=1) as one:
        _, serial = one.run(plan, x, profile=True)
    assert trace.wall < 0.7 * serial.wall


@gpu
def test_record_stream_keeps_a_freed_input_from_reuse_while_a_side_stream_reads_it():
    """make (stream 0) -> t; slow (stream 1) sleeps, then reads t; t is freed on the host right
    after slow is enqueued, and churn (stream 0) then allocates and fills blocks of t's size.
    Without record_stream the allocator could hand t's block to churn before slow reads it."""
    n = 1 << 22
    g = gx.Graph("reuse")
    x = g.input("x")
    t = g.node("make", lambda v: v + 1, x)
    slow = g.node("slow", lambda v: (torch.cuda._sleep(50_000_000), v * 2)[1], t)
    churn = g.node("churn", lambda v: sum(torch.full_like(v, -1.0).sum() for _ in range(16)), x)
    g.output(slow, churn)
    plan = gx.plan(g, inline_below=0, fuse_chains=False)
    program = StreamProgram(
        streams=2,
        schedule="dataflow",
        ops=(
            StreamOp("make", 0, record=True),
            StreamOp("slow", 1, ("make",), True, ("make",)),
            StreamOp("churn", 0),
        ),  # fmt: skip
        fork=False,
        join=("slow",),
        to_caller=("slow",),
        stream_of={"make": 0, "slow": 1, "churn": 0},
    )
    program.check(plan)
    with gx.CudaStreamExecutor(streams=2) as ex, torch.no_grad():
        ex.program = lambda p: program
        for _ in range(20):
            xs = torch.randn(n, device="cuda")
            got, _ = ex.run(plan, xs)
            torch.testing.assert_close(got, (xs + 1) * 2)


@gpu
def test_capture_replays_equal_eager_and_recaptures_on_a_new_shape():
    with torch.device("cuda"):
        g = branches(4, width=128)
    plan = gx.plan(g, inline_below=0)
    seq = gx.SequentialExecutor()
    with gx.CudaStreamExecutor(streams=4, capture=True) as ex, torch.no_grad():
        x = torch.randn(2, 128, device="cuda")
        first = ex.run(plan, x)
        torch.testing.assert_close(first, seq.run(plan, x))
        kept = first.clone()
        for _ in range(5):
            y = torch.randn(2, 128, device="cuda")
            torch.testing.assert_close(ex.run(plan, y), seq.run(plan, y))
        torch.testing.assert_close(first, kept)  # outputs are copies: replays do not overwrite
        with pytest.warns(CaptureWarning, match="new input signature"):
            z = torch.randn(5, 128, device="cuda")
            torch.testing.assert_close(ex.run(plan, z), seq.run(plan, z))
        torch.testing.assert_close(ex.run(plan, x), seq.run(plan, x))  # first graph reused
        assert len(ex._graphs) == 2
    with gx.CudaStreamExecutor(capture=True) as ex, pytest.warns(CaptureWarning, match="grad"):
        torch.testing.assert_close(ex.run(plan, x), seq.run(plan, x))


@gpu
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradients_equal_eager(schedule):
    g = gx.Graph("towers")
    x = g.input("x")
    towers = [nn.Sequential(lin(64, 64), nn.Tanh(), lin(64, 64)) for _ in range(3)]
    g.output(g.node("sum", gx.add(), *(g.node(f"t{i}", m, x) for i, m in enumerate(towers))))
    gm = gx.GraphModule(g, executor=gx.CudaStreamExecutor(schedule=schedule)).cuda()
    xs = torch.randn(16, 64, device="cuda")
    gm(xs).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in gm.named_parameters()}
    gm.zero_grad()
    sum(m(xs) for m in towers).square().sum().backward()
    for n, p in gm.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5)


@gpu
def test_modes_apply_autocast_and_inference_mode():
    with torch.device("cuda"):
        g = branches(3, width=64)
    plan = gx.plan(g, inline_below=0)
    x = torch.randn(4, 64, device="cuda")
    with gx.CudaStreamExecutor() as ex:
        with torch.autocast("cuda", dtype=torch.float16):
            out, ref = ex.run(plan, x), gx.SequentialExecutor().run(plan, x)
        assert out.dtype == torch.float16
        torch.testing.assert_close(out, ref)
        with torch.inference_mode():
            assert ex.run(plan, x).is_inference()


@gpu
def test_node_error_names_the_node_and_the_executor_stays_usable():
    g = gx.Graph("fails")
    x = g.input("x")
    bad = g.node("bad", lambda t: t[:, 10_000], g.node("side", lin(8, 8).cuda(), x))
    g.output(g.node("out", gx.add(), g.node("main", lin(8, 8).cuda(), x), bad))
    with gx.CudaStreamExecutor(streams=3) as ex:
        with pytest.raises(gx.NodeError, match="node 'bad'"):
            ex.run(gx.plan(g, inline_below=0), torch.randn(2, 8, device="cuda"))
        with torch.device("cuda"):
            ok = branches(2, width=8)
        ex.run(gx.plan(ok), torch.randn(2, 8, device="cuda"))


@gpu
def test_a_program_on_the_callers_stream_runs_straight_unless_captured():
    with torch.device("cuda"):
        g = gx.Graph("chain")
        h = g.input("x")
        for i in range(4):
            h = g.node(f"l{i}", lin(32, 32), h)
        g.output(h)
        wide = branches(3, width=32)
    chain, split = gx.plan(g, inline_below=0, fuse_chains=False), gx.plan(wide, inline_below=0)
    x = torch.randn(2, 32, device="cuda")
    with gx.CudaStreamExecutor(streams=4) as ex, torch.no_grad():
        assert ex._one_by_one(chain) and not ex._one_by_one(split)
        torch.testing.assert_close(ex.run(chain, x), gx.SequentialExecutor().run(chain, x))
        _, trace = ex.run(chain, x, profile=True)  # profiling takes the stream loop
        assert {e.lane for e in trace.events} == {"stream 0"}
    with gx.CudaStreamExecutor(streams=4, capture=True) as ex:
        assert not ex._one_by_one(chain)


@gpu
def test_auto_follows_the_parameters_to_the_gpu_and_back():
    with gx.GraphModule(diamond(), executor="auto") as gm:
        assert isinstance(gm.executor, gx.ThreadExecutor)
        gm.cuda()
        gm(torch.randn(2, 512, device="cuda"))
        assert isinstance(gm.executor, gx.CudaStreamExecutor)
        gm.cpu()
        gm(torch.randn(2, 512))
        assert isinstance(gm.executor, gx.ThreadExecutor)


# -- GPU time of nodes (graphexec.gputime) ------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="checks the error raised where CUDA is missing")
def test_gpu_time_without_cuda_says_what_to_use():
    from graphexec.gputime import time_nodes_cuda

    g = diamond()
    with pytest.raises(RuntimeError, match="interpret.time_nodes"):
        time_nodes_cuda(g, ["a"], (torch.randn(2, 512),), 1)


def test_uses_cuda_looks_at_inputs_and_parameters():
    from graphexec.gputime import uses_cuda

    assert not uses_cuda(diamond(), (torch.randn(2, 512),))
    assert not uses_cuda(diamond())


def launches(n: int):
    def many(t):
        for _ in range(n):  # n tiny kernels: their launches take longer than they run
            t = t + 1
        return t

    return many


@gpu
def test_gpu_time_measures_kernels_not_launches():
    """A node that spins the GPU measures its spin; a node of many tiny kernels measures less
    GPU time than host time (launch-bound: the held queue runs them back to back)."""
    from graphexec.gputime import time_nodes_cuda, uses_cuda
    from graphexec.interpret import compute_order, time_nodes

    g = gx.Graph("spin_and_launches")
    x = g.input("x")
    spin = g.node("spin", sleeper(4_000_000), x)
    tiny = g.node("tiny", launches(200), x)
    g.output(g.node("sum", gx.add(), spin, tiny))
    names = compute_order(g)
    xs = (torch.zeros(4, device="cuda"),)
    gpu = time_nodes_cuda(g, names, xs, 5)
    host = time_nodes(g, names, xs, 5)
    assert gpu.runs == 5 and gpu.held == 5
    med = {n: sorted(s)[2] for n, s in gpu.items()}
    assert med["spin"] > 1e-3  # 4M cycles at under 2.5 GHz: over 1.6 ms of spinning
    assert med["tiny"] < sorted(host["tiny"])[2]
    assert uses_cuda(g, xs)


@gpu
def test_gpu_time_plan_runs_on_streams_equal_to_eager():
    """A plan arranged from GPU times runs on streams (and captured) as the sequential one."""
    from graphexec.gputime import time_nodes_cuda
    from graphexec.interpret import compute_order
    from graphexec.planner import arrange

    with torch.device("cuda"):
        g = branches(4, width=256)
    x = torch.randn(8, 256, device="cuda")
    samples = time_nodes_cuda(g, compute_order(g), (x,), 3)
    plan = arrange(g, {n: sorted(s)[1] for n, s in samples.items()}, inline_below=2e-6)
    with torch.no_grad(), gx.CudaStreamExecutor(streams=4, capture=True) as ex:
        torch.testing.assert_close(ex.run(plan, x), gx.SequentialExecutor().run(plan, x))


def test_benchmark_workloads_equal_their_eager_models_on_the_cpu(capsys):
    """The hand-built graphs of benchmarks/bench_cuda.py compute what their modules compute."""
    from benchmarks import bench_cuda

    bench_cuda.check_on_cpu(["inception", "towers", "chain"])
    assert capsys.readouterr().out.count("graph equals eager on the CPU") == 3
    assert bench_cuda.workload("towers", "cpu", batch=3).x.shape == (3, 512)
