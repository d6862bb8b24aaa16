"""torch.compile(model, backend="graphexec"): real Dynamo, every graph planned and run by graphexec.

Random multi-branch modules, with and without a graph break, must give eager's outputs and
gradients; a graph that cannot be planned runs as Dynamo gave it, with a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from tests.records import as_is

# Dynamo reads ``.grad`` of non-leaf tensors while it builds a resumed frame in grad mode.
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor:UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: instances of one class share a code object, and
    Dynamo's recompile limit would otherwise run later tests eagerly."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Branches(nn.Module):
    """``width`` branches of random depth from one input, summed; optionally a graph break
    (``if y.sum() > 0``) before a head::

        x -> [b0] -\\
        x -> [b1] --+ sum -> (break) -> head
        x -> [b2] -/
    """

    def __init__(self, seed: int, graph_break: bool):
        super().__init__()
        rng = random.Random(seed)
        width, dim = rng.randint(2, 4), 16
        self.branches = nn.ModuleList(
            nn.Sequential(
                *[m for _ in range(rng.randint(1, 3)) for m in (nn.Linear(dim, dim), nn.Tanh())]
            )  # fmt: skip
            for _ in range(width)
        )
        self.head = nn.Linear(dim, 4)
        self.graph_break = graph_break

    def forward(self, x):
        y = sum(b(x) for b in self.branches)
        if self.graph_break and y.sum() > 0:  # data-dependent: Dynamo splits the frame here
            y = -y
        return self.head(torch.relu(y))


#: Backend options: measured and tried (on these tiny graphs Dynamo's graph usually wins and
#: is handed back), and untried with every task dispatched (the branches overlap on threads:
#: the test also makes the overlap estimate say yes, which per-node times of 16-wide layers
#: decide either way on a 2-core machine).
MODES = {"measured": {"repeats": 2}, "overlapped": {"check": False, "inline_below": 0.0}}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("graph_break", [False, True], ids=["one-graph", "graph-break"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_branches_equal_eager_outputs_and_gradients(seed, graph_break, mode, monkeypatch):
    if mode == "overlapped":
        monkeypatch.setattr(gx.steps, "_concurrency_pays", lambda *args: None)
    model = Branches(seed, graph_break)
    twin = copy.deepcopy(model)
    backend = gx.compile_backend(executor="threads", **MODES[mode])
    compiled = torch.compile(model, backend=backend)
    for x in (torch.randn(8, 16), -torch.randn(8, 16)):  # both sides of the branch
        out, expected = compiled(x), twin(x)
        torch.testing.assert_close(out, expected)
        out.square().sum().backward()
        expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert len(backend.graphs) >= (2 if graph_break else 1)
    assert all(g.plan is not None and g.fallback is None for g in backend.graphs), backend.graphs
    first = backend.graphs[0]
    assert {"branches.0.0", "branches.1.0"} <= set(first.plan.graph.nodes)  # module-sized tasks
    if mode == "overlapped":  # the branches' graph runs on graphexec's threads
        assert first.plan.parallel and first.handed_back is None, first
    backend.close()


def test_a_kept_plan_is_watched_and_re_checked_by_its_tuner(monkeypatch):
    """The compile backend's graphs have the owner `GraphModule` has (`graphexec.tuner`): the
    backend's policy, and a watch that counts the calls the plan runs (it re-checks them
    when they drift: `tests/test_budget.py` drives that through `GraphModule`)."""
    monkeypatch.setattr(gx.steps, "_concurrency_pays", lambda *args: None)
    strict = gx.Policy(drift=2.0)
    backend = gx.compile_backend(executor="threads", policy=strict, **MODES["overlapped"])
    compiled = torch.compile(Branches(0, False), backend=backend)
    with torch.no_grad():
        for _ in range(3):
            compiled(torch.randn(8, 16))
    graph = backend.graphs[0]
    assert graph.handed_back is None and graph.tuner.policy is strict
    assert graph.tuner.watch is not None and graph.tuner.watch.factor == 2.0
    assert graph.plan is graph.tuner.plan and graph.plan.measured
    assert graph.tuner.watch.calls == 3  # every call the plan ran, the first (which planned) too
    backend.close()


@pytest.mark.parametrize("check", [True, False], ids=["measured", "untried"])
def test_a_plan_that_does_not_win_hands_dynamos_graph_back(check):
    """Nothing to overlap: Dynamo gets its own ``forward`` back, so no graphexec code runs
    per call (what ``backend="eager"`` returns). Measured, the trial against the graph says
    so first; untried, the plan is known to run the same ops one after another. At one
    intra-op thread, so that no thread budget (which the executor honours) is in play."""
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    returned = []

    def spy(gm, example_inputs):
        fn = backend(gm, example_inputs)
        returned.append((fn, gm))
        return fn

    backend = gx.compile_backend(executor="threads", repeats=2, check=check)
    x = torch.randn(8, 16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.testing.assert_close(torch.compile(model, backend=spy)(x), model(x))
    finally:
        torch.set_num_threads(before)
    ((fn, gm),) = returned
    assert fn == gm.forward and fn.__self__ is gm
    assert fn.__name__ == "forward"  # the generated code, not the lazy stub Dynamo made
    (graph,) = backend.graphs
    assert graph.plan is not None and graph.handed_back
    if not check:
        assert "same ops one after another" in graph.handed_back
    assert "runs as Dynamo gave it" in repr(graph)


def test_a_plan_with_a_thread_budget_is_not_handed_back():
    """A measured thread budget runs through the executor, which honours it: Dynamo's graph
    would run at the caller's threads, throwing the budget away (the module as it is too)."""
    g = gx.Graph("chain")
    g.output(g.node("a", nn.Linear(4, 4), g.input("x")))
    p = gx.plan(g)
    with gx.ThreadExecutor() as threads, gx.SequentialExecutor() as inline:
        for q in (
            p,
            as_is(p, g.nodes["a"].fn, "measured"),
        ):
            assert gx.dynamo._why_as_is(q, g, threads) is not None
            budgeted = dataclasses.replace(q, thread_budget=1)
            assert gx.dynamo._why_as_is(budgeted, g, threads) is None
            assert gx.dynamo._why_as_is(budgeted, g, inline) is None


def test_registered_name_and_options():
    """``backend="graphexec"`` comes from the ``torch_dynamo_backends`` entry point."""
    assert "graphexec" in torch._dynamo.list_backends()
    model = Branches(2, graph_break=True).eval()
    x = torch.randn(4, 16)
    for options in (None, {"executor": "sequential", "check": False}, {"executor": "auto"}):
        compiled = torch.compile(model, backend="graphexec", options=options)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
        torch._dynamo.reset()


def test_a_graph_that_cannot_be_planned_runs_as_dynamo_gave_it():
    """``with torch.no_grad():`` inside forward: Dynamo writes grad-mode switches as nodes,
    which graphexec cannot split across threads."""

    class NoGradInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            with torch.no_grad():
                frozen = self.a(x)
            return self.b(x) + frozen

    model = NoGradInside()
    backend = gx.compile_backend()
    x = torch.randn(4, 8)
    with pytest.warns(gx.PlanFallbackWarning, match="node '_set_grad_enabled"):
        out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model.a.weight.grad is None and model.b.weight.grad is not None
    assert backend.graphs[0].plan is None and "grad mode" in backend.graphs[0].fallback


def test_symbolic_example_inputs_are_planned_on_the_first_call():
    """``dynamic=True`` hands over ``SymInt`` sizes: nothing to measure until a real call."""
    model = Branches(3, graph_break=False).eval()
    backend = gx.compile_backend(executor="sequential", check=False)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for n in (3, 5, 7):
            x = torch.randn(n, 16)
            torch.testing.assert_close(compiled(x), model(x))
    assert len(backend.graphs) == 1 and backend.graphs[0].plan is not None


def test_planning_leaves_no_trace_random_state_and_running_statistics():
    """Planning runs the graph many times; dropout and BatchNorm must not see those runs."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    x = torch.randn(16, 8)
    compiled = torch.compile(model, backend=gx.compile_backend(executor="sequential"))
    torch.manual_seed(7)
    out = compiled(x)
    torch.manual_seed(7)
    torch.testing.assert_close(out, twin(x))
    torch.testing.assert_close(model[2].running_mean, twin[2].running_mean)
    assert int(model[2].num_batches_tracked) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_runs_graphs_on_a_gpu_on_cuda_streams():
    model = Branches(4, graph_break=True).cuda().eval()
    backend = gx.compile_backend(executor="auto")
    x = torch.randn(8, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    assert all(isinstance(g._executor, gx.CudaStreamExecutor) for g in backend.graphs)
    backend.close()


def test_vmap_inside_forward_is_planned_not_dropped():
    """Dynamo writes the vmap's level push/pop as calls nobody reads (see test_export)."""
    from tests.test_export import VmapMask

    model, x = VmapMask(), torch.randn(4, 8)
    twin = copy.deepcopy(model)
    backend = gx.compile_backend(executor="threads", repeats=2)
    out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, twin(x))
    assert backend.graphs[0].plan is not None, backend.graphs[0].fallback
    out.sum().backward()
    twin(x).sum().backward()
    torch.testing.assert_close(model.a.weight.grad, twin.a.weight.grad)


def test_the_trials_leave_no_trace():
    """Planning times the plan against Dynamo's graph (twice when the plan wins the first
    trial): those runs must not move running statistics or the random state either."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 2))
    backend = gx.compile_backend(executor="threads", inline_below=0.0, repeats=2)
    given = []

    def keep_inputs(gm, example_inputs):
        given.append(list(example_inputs))
        return backend(gm, example_inputs)

    torch.compile(model, backend=keep_inputs)(torch.randn(16, 8))
    (graph,) = backend.graphs
    stats, rng = model[2].running_mean.clone(), torch.random.get_rng_state()
    graph.make_plan(given[0])
    said = graph.handed_back
    assert said is None or "measured" in said or "one after another" in said
    torch.testing.assert_close(model[2].running_mean, stats)
    assert torch.equal(torch.random.get_rng_state(), rng)


class Rotary(nn.Module):
    """Llama's and Qwen2's rotary embedding computes cos/sin in float32 with autocast off."""

    def forward(self, x):
        with torch.autocast(device_type="cpu", enabled=False):
            angles = x.float() * 0.5
            return angles.cos(), angles.sin()


class RotaryTowers(nn.Module):
    """An autocast region, then two branches that read it::

        x -> rotary [_enter_autocast ... _exit_autocast] -> cos -> a -\\
                                                         \\-> sin -> b --+ add
    """

    def __init__(self):
        super().__init__()
        self.rotary, self.a, self.b = Rotary(), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        cos, sin = self.rotary(x)
        return self.a(x * cos) + self.b(x * sin)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_an_autocast_region_is_one_task_and_the_rest_is_planned(autocast, monkeypatch):
    """Dynamo writes the region as ``_enter_autocast`` ... ``_exit_autocast`` (thread-local
    state): kept whole in one node, never split across threads; the branches after it are
    planned and run on graphexec's threads, under the caller's autocast."""
    monkeypatch.setattr(gx.steps, "_concurrency_pays", lambda *args: None)
    model, x = RotaryTowers(), torch.randn(4, 8)
    twin = copy.deepcopy(model)
    backend = gx.compile_backend(executor="threads", check=False, inline_below=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, expected = torch.compile(model, backend=backend)(x), twin(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(model.a.weight.grad, twin.a.weight.grad)
    (graph,) = backend.graphs
    assert graph.fallback is None and graph.handed_back is None, graph
    codes = {n.name: getattr(n.fn, "code", "") for n in graph.plan.graph if not n.is_input}
    region = [name for name, code in codes.items() if "_enter_autocast" in code]
    assert len(region) == 1 and "_exit_autocast" in codes[region[0]], codes
    assert {"a", "b"} <= set(codes) and graph.plan.parallel
    backend.close()


class Regroup(nn.Module):
    """Reshapes by the input's sizes (as sequencer2d's LSTM blocks do): with dynamic shapes
    Dynamo's graph takes those sizes as ``SymInt`` inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        rows = x.permute(0, 2, 1).reshape(-1, x.shape[1])
        y = rows.reshape(x.shape[0], x.shape[2], x.shape[1])
        return self.a(y) + self.b(y)


def test_a_dynamo_graph_with_symbolic_sizes_runs_on_the_example_inputs_dynamo_passed():
    """Dynamo hands a backend symbolic sizes beside real tensors: planned on them, each size
    is the int it stands for (aten ops raised ``SymIntArrayRef expected to contain only
    concrete integers``)."""
    given = []

    def keep(gm, example_inputs):
        given.append((gm, list(example_inputs)))
        return gm.forward

    model, x = Regroup().eval(), torch.randn(2, 8, 8)
    with torch.no_grad():
        torch.compile(model, backend=keep, dynamic=True)(x)
        ((gm, example),) = given
        assert any(isinstance(v, torch.SymInt) for v in example)
        g = gx.trace(gm)
        for p in (gx.plan(g, example_inputs=example), gx.plan(g, inline_below=0)):
            (out,) = gx.SequentialExecutor().run(p, *example)
            torch.testing.assert_close(out, model(x))
        real = [int(v) if isinstance(v, torch.SymInt) else v for v in example]
        with gx.ThreadExecutor() as ex:
            torch.testing.assert_close(ex.run(p, *real)[0], model(x))
