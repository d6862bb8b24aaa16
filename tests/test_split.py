"""Data parallelism (``gx.plan(..., data_parallel=)``): split plans equal unsplit ones on every
executor, batch-dependent graphs are refused before anything runs, gradients equal eager.

The refusal tests first show the silent wrong answer a split would give (the graph run on
shards by hand differs from the whole batch), then that the plan refuses, naming the node.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings

import graphexec as gx
from graphexec import interpret, trials
from graphexec import split as split_mod
from graphexec.decisions import SPLIT, last
from tests.clocks import steady_clock
from tests.test_conformance import D, assert_same, build_random, random_dags

B = 7  # uneven shards: 7 = 3 + 2 + 2, or 4 + 3


def towers() -> gx.Graph:
    """
        x
       / \\
      a   b        (a: Linear-ReLU, b: Linear)
       \\ /
       add -> head
    """
    g = gx.Graph("towers")
    x = g.input("x")
    a = g.node("a", nn.Sequential(nn.Linear(D, 16), nn.ReLU()), x)
    b = g.node("b", nn.Linear(D, 16), x)
    g.output(g.node("head", nn.Linear(16, 3), g.node("add", gx.add(), a, b)))
    return g


def whole_run(g: gx.Graph, *inputs):
    return gx.SequentialExecutor().run(gx.plan(g), *inputs)


def params(g: gx.Graph) -> list[torch.Tensor]:
    return [q for n in g if isinstance(n.fn, nn.Module) for q in n.fn.parameters()]


# -- split plans equal unsplit ones ------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_forced_split_equals_the_whole_batch(local_executor, k):
    g = towers()
    x = torch.randn(B, D)
    p = gx.plan(g, (x,), data_parallel=k)
    assert p.data_parallel == k and p.split.inputs == (0,) and p.split.outputs == (0,)
    assert p.call_seconds is None  # measured whole, never split: nothing for drift to compare
    assert_same(local_executor.run(p, x), whole_run(g, x))


def test_print_says_what_was_split():
    g = towers()
    text = str(gx.plan(g, (torch.randn(B, D),), data_parallel=2))
    assert "data parallel: each call's batch split into 2 shards: x (axis 0)" in text
    assert "outputs concatenated along axis 0" in text
    assert "decision: data parallel: 2 shards, as asked" in text


def test_inputs_passed_whole_outputs_of_several_kinds_and_another_axis(local_executor):
    """x [T, B, D] split along axis 1; w [D] passed whole; outputs: a dict of a tensor batched
    along axis 1 and one batched along axis 0 (transposed), and a tuple with a constant."""
    g = gx.Graph("axes")
    x, w = g.input("x"), g.input("w")
    scaled = g.node("scale", torch.mul, x, w)
    lin = g.node("lin", nn.Linear(D, D), scaled)
    g.output({"seq": lin, "batch_first": g.node("t", lambda t: t.transpose(0, 1), lin),
              "const": g.node("n", lambda t: t.shape[-1], lin)})  # fmt: skip
    x_val, w_val = torch.randn(3, B, D), torch.randn(D)
    p = gx.plan(g, (x_val, w_val), data_parallel=3, batch_axis={"x": 1, "w": None})
    assert p.split.inputs == (1, None)
    out = local_executor.run(p, x_val, w_val)
    assert out["const"] == D
    assert_same(out, whole_run(g, x_val, w_val))


def test_tensor_inputs_without_the_axis_are_passed_whole(local_executor):
    g = gx.Graph("bias")
    g.output(g.node("add", torch.add, g.input("x"), g.input("bias")))
    x, bias = torch.randn(B, 4), torch.tensor(2.0)  # a 0-d tensor has no axis 0
    p = gx.plan(g, (x, bias), data_parallel=2)
    assert p.split.inputs == (0, None)
    assert_same(local_executor.run(p, x, bias), x + 2)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(random_dags())
def test_random_dags_split_equal_unsplit(local_executor, dag):  # fmt: skip
    n_inputs, specs, seed = dag
    torch.manual_seed(seed)
    g, eager = build_random(n_inputs, specs)
    xs = tuple(torch.randn(5, D) for _ in range(n_inputs))
    with torch.no_grad():
        expected = eager(*xs)
    for k in (2, 3):
        p = gx.plan(g, xs, data_parallel=k, inline_below=0.0, fuse_chains=False)
        assert_same(local_executor.run(p, *xs), expected)


def test_profile_shows_every_shard_task():
    g = towers()
    x = torch.randn(B, D)
    p = gx.plan(g, (x,), data_parallel=2, inline_below=0.0)
    with gx.ThreadExecutor() as ex:
        out, trace = ex.run(p, x, profile=True)
    assert_same(out, whole_run(g, x))
    assert sorted(e.task for e in trace.events) == sorted(list(p.tasks) * 2)


def test_the_callers_thread_count_is_kept():
    g = towers()
    x = torch.randn(B, D)
    before = torch.get_num_threads()
    with gx.ThreadExecutor() as ex:
        ex.run(gx.plan(g, (x,), data_parallel=2), x)
    assert torch.get_num_threads() == before


# -- refused, never silently different ---------------------------------------------------------
def _refusals():
    """(graph, the node to be named): each one's result depends on the whole batch."""
    g = gx.Graph("bn")
    h = g.node("lin", nn.Linear(D, D), g.input("x"))
    g.output(g.node("head", nn.Linear(D, 2), g.node("bn", nn.BatchNorm1d(D), h)))
    yield pytest.param(g, "bn", id="batchnorm-training")
    g = gx.Graph("center")
    h = g.node("lin", nn.Linear(D, D), g.input("x"))
    g.output(g.node("center", lambda t: t - t.mean(0, keepdim=True), h))
    yield pytest.param(g, "center", id="reduction-over-batch")
    g = gx.Graph("pool")
    h = g.node("lin", nn.Linear(D, D), g.input("x"))
    g.output(g.node("head", torch.relu, g.node("total", lambda t: t.sum(0), h)))
    yield pytest.param(g, "total", id="reduction-without-batch-axis")
    g = gx.Graph("summary")
    h = g.node("lin", nn.Linear(D, D), g.input("x"))
    g.output(h, g.node("energy", lambda t: t.pow(2).mean(), h))
    yield pytest.param(g, "energy", id="output-without-batch-axis")


def _differs(whole, parts) -> bool:
    """Whether the shards' outputs, merged as a split would, differ from the whole batch's."""
    for w, *ps in zip(*(torch.utils._pytree.tree_leaves(o) for o in (whole, *parts)),
                      strict=True):  # fmt: skip
        if w.dim() == 0:
            return True  # nothing to concatenate along
        merged = torch.cat(ps)
        if merged.shape != w.shape or not torch.allclose(merged, w, atol=1e-5):
            return True
    return False


@pytest.mark.parametrize(("g", "node"), list(_refusals()))
def test_batch_dependent_graphs_are_refused_naming_the_node(g, node):
    x = torch.randn(8, D)
    with torch.no_grad():  # what running the graph on halves and merging would silently give
        assert _differs(whole_run(g, x), [whole_run(g, h) for h in torch.tensor_split(x, 2)])
    with pytest.raises(gx.SplitError, match=f"'{node}'") as err:
        gx.plan(g, (x,), data_parallel=2)
    assert err.value.node == node
    auto = gx.plan(g, (x,), data_parallel="auto")
    assert auto.split is None
    said = last(auto.decisions, SPLIT)
    assert said.choice == "whole" and str(said).startswith("data parallel: not split: refused")
    assert f"'{node}'" in str(said)


def test_a_node_that_fails_on_a_shard_is_named():
    g = gx.Graph("fixed")
    g.output(g.node("reshape", lambda t: t.view(8, 4, 8), g.input("x")))
    with pytest.raises(gx.SplitError, match="node 'reshape' fails on a shard") as err:
        gx.plan(g, (torch.randn(8, D),), data_parallel=2)
    assert err.value.node == "reshape"


def test_the_check_changes_no_state_and_runs_dropout_off():
    """BatchNorm in eval mode is split-safe (running statistics); the check leaves them and
    the modules' training flags as they were; dropout in training mode is not refused."""
    g = gx.Graph("eval_bn")
    bn = nn.BatchNorm1d(D)
    drop = nn.Dropout(0.5)
    h = g.node("drop", drop, g.node("bn", bn, g.input("x")))
    g.output(g.node("head", nn.Linear(D, 2), h))
    x = torch.randn(8, D)
    before = bn.running_mean.clone()
    with pytest.raises(gx.SplitError, match="'bn'"):
        split_mod.check_split(g, (x,), gx.Split(2, (0,), ()))
    assert torch.equal(bn.running_mean, before) and bn.training and drop.training
    bn.eval()
    assert split_mod.check_split(g, (x,), gx.Split(2, (0,), ())) == (0,)
    assert drop.training


def test_an_index_of_the_shards_own_rows_is_not_refused(local_executor):
    """x -> rows (torch.arange(batch): an integer value, per shard 0..n-1) -> pick (x[rows,
    first column]): correct per shard although ``rows`` is not a concatenation of shards."""
    g = gx.Graph("pick")
    x = g.input("x")
    rows = g.node("rows", lambda t: torch.arange(t.shape[0]), x)
    g.output(g.node("pick", lambda t, r: t[r, 0], x, rows))
    xs = torch.randn(B, D)
    p = gx.plan(g, (xs,), data_parallel=2)
    assert_same(local_executor.run(p, xs), xs[:, 0])
    g = gx.Graph("rows")  # ... but as an output it is wrong when split: refused
    g.output(g.node("rows", lambda t: torch.arange(t.shape[0]), g.input("x")))
    with pytest.raises(gx.SplitError, match="'rows'"):
        gx.plan(g, (xs,), data_parallel=2)


def test_samples_all_equal_cannot_show_a_batch_dependence():
    """Documented: the check is as strong as the example inputs (here it cannot see it)."""
    g = gx.Graph("center")
    g.output(g.node("center", lambda t: t - t.mean(0, keepdim=True), g.input("x")))
    assert split_mod.check_split(g, (torch.ones(4, 3),), gx.Split(2, (0,), ())) == (0,)


# -- training through it -----------------------------------------------------------------------
def _grads(g: gx.Graph, run) -> list[torch.Tensor]:
    for q in params(g):
        q.grad = None
    run().float().pow(2).sum().backward()
    return [q.grad.clone() for q in params(g)]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
def test_gradients_through_a_split_on_threads_equal_eager(autocast):
    g = towers()
    x = torch.randn(B, D)
    p = gx.plan(g, (x,), data_parallel=2)
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        eager = _grads(g, lambda: whole_run(g, x))
        with gx.ThreadExecutor() as ex:
            split = _grads(g, lambda: ex.run(p, x))
            assert ex.run(p, x).dtype == (torch.bfloat16 if autocast else torch.float32)
    for a, b in zip(split, eager, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_grad_to_the_input_and_the_callers_modes():
    g = towers()
    x = torch.randn(B, D, requires_grad=True)
    p = gx.plan(g, (x.detach(),), data_parallel=3)
    with gx.ThreadExecutor() as ex:
        ex.run(p, x).sum().backward()
        split_grad = x.grad.clone()
        x.grad = None
        whole_run(g, x).sum().backward()
        torch.testing.assert_close(split_grad, x.grad)
        with torch.no_grad():
            assert not ex.run(p, x).requires_grad
        with torch.inference_mode():
            assert ex.run(p, x).is_inference()


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, True, 1.5, "two"])
def test_a_bad_number_of_shards_is_refused(k):
    with pytest.raises(ValueError, match="data_parallel must be"):
        gx.plan(towers(), (torch.randn(B, D),), data_parallel=k)


def test_options_that_cannot_work_are_refused_before_anything_runs():
    g = towers()
    with pytest.raises(ValueError, match="needs example_inputs"):
        gx.plan(g, data_parallel=2)
    with pytest.raises(ValueError, match="batch of at least 4; the example batch has 3"):
        gx.plan(g, (torch.randn(3, D),), data_parallel=4)
    with pytest.raises(ValueError, match="batch_axis names"):
        gx.plan(g, (torch.randn(3, D),), data_parallel=2, batch_axis={"y": 0})
    with pytest.raises(ValueError, match="batch_axis must be"):
        gx.plan(g, (torch.randn(3, D),), data_parallel=2, batch_axis=-1)


def test_example_inputs_that_disagree_on_the_batch_are_refused():
    g = gx.Graph("two")
    g.output(g.node("add", torch.add, g.input("x"), g.input("y")))
    with pytest.raises(ValueError, match=r"disagree on the batch size \('x' 6, 'y' 4\)"):
        gx.plan(g, (torch.randn(6, 2), torch.randn(4, 2)), data_parallel=2)
    p = gx.plan(g, (torch.randn(6, 2), torch.randn(6, 2)), data_parallel=2)
    with pytest.raises(ValueError, match=r"disagree on the batch size \('x' 6, 'y' 5\)"):
        gx.SequentialExecutor().run(p, torch.randn(6, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="input 'y' is split along axis 0"):
        gx.SequentialExecutor().run(p, torch.randn(6, 2), 1.0)
    with pytest.raises(gx.ArityError):
        gx.SequentialExecutor().run(p, torch.randn(6, 2))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_a_batch_smaller_than_k_runs_in_fewer_shards(local_executor, batch):
    g = towers()
    p = gx.plan(g, (torch.randn(8, D),), data_parallel=4)
    x = torch.randn(batch, D)
    assert_same(local_executor.run(p, x), whole_run(g, x))


def test_an_error_in_one_shard_names_the_node_and_the_executor_stays_usable():
    g = gx.Graph("fragile")
    g.output(g.node("check", lambda t: t if t.isfinite().all() else 1 / 0, g.input("x")))
    x = torch.randn(B, D)
    p = gx.plan(g, (x,), data_parallel=2)
    bad = x.clone()
    bad[-1, 0] = float("nan")  # only the last shard fails
    with gx.ThreadExecutor() as ex:
        with pytest.raises(gx.NodeError, match="node 'check'"):
            ex.run(p, bad)
        assert_same(ex.run(p, x), x)


# -- "auto", the cache -----------------------------------------------------------------------------
def test_auto_keeps_a_split_only_when_its_trial_wins(monkeypatch):
    """The decision's rule, with the trial's outcome given (the speeds are not asserted): the
    split must beat the better of the whole batch at the caller's threads and at one.

    The plan's other decisions are measured on a steady clock (`tests.clocks`): every run
    takes one tick, so the thread budget trial keeps the caller's threads. On the real clock a
    busy core made it pick one thread, and the split was then not compared with it."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")  # every plan decided here, not reused
    steady_clock(monkeypatch, trials, interpret)
    g = towers()
    x = torch.randn(B, D)
    real = trials.decide
    cases = [
        ("split", 0.6, 1.0, "2 shards kept: they ran 1.67x faster than the plan on"),
        ("whole", 1.4, 1.0, "not split: 2 shards on one-thread lanes ran 1.40x slower"),
        (split_mod.ONE, 0.6, 0.5, "ran 1.20x slower than the whole batch at 1 intra"),
    ]
    for pick, ratio, one, said in cases:  # fmt: skip
        seen = {}

        def decide(runs, *args, pick=pick, ratio=ratio, one=one, seen=seen, **kwargs):
            if "split" not in runs:  # the other decisions' trials run for real
                return real(runs, *args, **kwargs)
            seen.update(runs=list(runs), floors=kwargs["floors"])
            ratios = {"whole": 1.0, split_mod.ONE: one, "split": ratio}
            return trials.Outcome(ratios, {n: r * 1e-3 for n, r in ratios.items()}, pick)

        monkeypatch.setattr(trials, "decide", decide)
        p = gx.plan(g, (x,), data_parallel="auto")
        assert said in str(p.decisions[-1])
        assert (p.data_parallel == 2) == (pick == "split")
        if torch.get_num_threads() > 1:
            assert p.thread_budget is None, p.decisions
            assert seen["runs"] == ["whole", split_mod.ONE, "split"]
            assert seen["floors"] == {"split": (split_mod.ONE, 0.45)}
        if pick == "split":
            assert p.call_seconds == 6e-4
            assert_same(gx.ThreadExecutor().run(p, x), whole_run(g, x))


def test_auto_measures_and_says_what_it_chose():
    g = towers()
    p = gx.plan(g, (torch.randn(B, D),), data_parallel="auto")
    line = str(last(p.decisions, SPLIT))
    assert ("kept" in line) == (p.split is not None)
    assert "measured side by side" in line


def test_auto_with_check_false_and_a_batch_of_one():
    g = towers()
    p = gx.plan(g, (torch.randn(B, D),), data_parallel="auto", check=False)
    assert p.split is None and "not tried (check=False)" in str(p.decisions[-1])
    p = gx.plan(g, (torch.randn(1, D),), data_parallel="auto")
    assert p.split is None and "a batch of 1 cannot be split" in str(p.decisions[-1])


def test_the_split_is_kept_in_the_decision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHEXEC_CACHE_DIR", str(tmp_path))
    x = torch.randn(B, D)
    first = gx.plan(towers(), (x,), data_parallel=3)
    [file] = tmp_path.glob("plan-*.json")
    assert json.loads(file.read_text())["split"] == {"shards": 3, "inputs": [0],
                                                     "outputs": [0]}  # fmt: skip
    g = towers()
    again = gx.plan(g, (x,), data_parallel=3)
    assert str(again.decisions[-1]).startswith("reused from the cache")
    assert again.split == first.split
    assert_same(gx.ThreadExecutor().run(again, x), whole_run(g, x))
    assert gx.plan(towers(), (x,), data_parallel=2).split.shards == 2  # another key


# -- Dask: shards on different workers, in one call ----------------------------------------------
@pytest.mark.dask
def test_dask_runs_each_shard_on_a_worker(dask_client):
    g = towers()
    x = torch.randn(B, D)
    p = gx.plan(g, (x,), data_parallel=2)
    with gx.DaskExecutor(client=dask_client) as ex:
        assert_same(ex.run(p, x), whole_run(g, x))
        out, trace = ex.run(p, x, profile=True)
        assert_same(out, whole_run(g, x))
        assert len(trace.lanes) == 2  # one shard per worker
        sent = ex.sent_bytes
        ex.run(p, x)
        assert ex.sent_bytes - sent < 64 << 10  # job specs and inputs, no weights again
        small = torch.randn(1, D)
        assert_same(ex.run(p, small), whole_run(g, small))
        with pytest.raises(ValueError, match="input 'x' is split along axis 0"):
            ex.run(p, 1.0)


FIXED_DAGS = [  # in random_dags' terms: (kind, source indices, tuple pick)
    (1, [("linear", [0], 0), ("relu", [1], 0), ("add", [1, 2], 0)]),
    (2, [("catlin", [0, 1], 0), ("split", [2], 1), ("mean", [3, 0], 1), ("linear", [4], 0)]),
    (1, [("split", [0], 0), ("linear", [1], 1), ("catlin", [1, 2, 0], 0)]),
]


@pytest.mark.dask
def test_dask_dags_split_equal_unsplit(dask_client):
    with gx.DaskExecutor(client=dask_client) as ex:
        for n_inputs, specs in FIXED_DAGS:
            g, eager = build_random(n_inputs, specs)
            xs = tuple(torch.randn(5, D) for _ in range(n_inputs))
            with torch.no_grad():
                expected = eager(*xs)
            p = gx.plan(g, xs, data_parallel=2, inline_below=0.0, fuse_chains=False)
            assert_same(ex.run(p, *xs), expected)


# -- CUDA: shards on streams ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_run_a_split_plan():
    g = towers()
    for n in g:
        if isinstance(n.fn, nn.Module):
            n.fn.cuda()
    x = torch.randn(B, D, device="cuda")
    p = gx.plan(g, (x,), data_parallel=2)
    with gx.CudaStreamExecutor() as ex:
        out = ex.run(p, x)
        torch.testing.assert_close(out, whole_run(g, x))
        x.requires_grad_(True)
        ex.run(p, x).sum().backward()
        split_grad = x.grad.clone()
        x.grad = None
        whole_run(g, x).sum().backward()
        torch.testing.assert_close(split_grad, x.grad)


def test_no_thread_is_left_behind():
    before = {t.name for t in threading.enumerate()}
    g = towers()
    x = torch.randn(B, D)
    with gx.ThreadExecutor() as ex:
        ex.run(gx.plan(g, (x,), data_parallel=2), x)
    assert {t.name for t in threading.enumerate()} <= before


def test_a_graph_module_trains_through_a_split():
    """``GraphModule(..., data_parallel=2)``: planned on the first call, gradients as eager."""
    g = towers()
    x = torch.randn(B, D)
    eager = _grads(g, lambda: whole_run(g, x))
    with gx.GraphModule(g, executor="threads", data_parallel=2) as gm:
        split = _grads(g, lambda: gm(x))
        assert gm.plan.data_parallel == 2
    for a, b in zip(split, eager, strict=True):
        torch.testing.assert_close(a, b)
