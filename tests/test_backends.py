"""Compiled task backends: outputs equal the sequential reference; failures fall back, named.

The graph::

    x -> a0 -> a1 --\\
    x -> b0 -> b1 ---+-> cat -> head
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.backends import CompiledRunner, CompileFallbackWarning, compile_plan


def _graph() -> gx.Graph:
    torch.manual_seed(0)
    g = gx.Graph("two")
    x = g.input("x")
    a = g.node("a1", nn.ReLU(), g.node("a0", nn.Linear(8, 16), x))
    b = g.node("b1", nn.Tanh(), g.node("b0", nn.Linear(8, 16), x))
    g.output(g.node("head", nn.Linear(32, 4), g.node("cat", gx.cat(1), a, b)))
    return g


def _reference(plan: gx.Plan, x: torch.Tensor) -> torch.Tensor:
    return gx.SequentialExecutor().run(plan, x)


@pytest.mark.parametrize("schedule", ["levels", "dataflow"])
def test_onnxruntime_tasks_equal_reference(schedule):
    g = _graph()
    x = torch.randn(5, 8)
    p = gx.plan(g, inline_below=0)
    cp = compile_plan(p, "onnxruntime", example_inputs=(x,))
    assert set(cp) == {t for t in p.tasks} and not cp.fallbacks
    assert all(s > 0 for s in cp.compile_s.values())
    assert [cp.threads[t] for t in p.levels[0]] == [1, 1]  # two concurrent tasks: 1 core each
    with CompiledRunner(cp, schedule=schedule) as ex, torch.inference_mode():
        torch.testing.assert_close(ex.run(p, x), _reference(p, x), rtol=1e-4, atol=1e-5)
        other = torch.randn(3, 8)  # another shape: runs eagerly, still right
        torch.testing.assert_close(ex.run(p, other), _reference(p, other))


def test_chain_task_gets_every_core():
    g = gx.Graph("chain")
    y = g.input("x")
    for i in range(4):
        y = g.node(f"l{i}", nn.Linear(8, 8), y)
    g.output(y)
    p = gx.plan(g, inline_below=0)
    cp = compile_plan(p, "onnxruntime", example_inputs=(torch.randn(2, 8),))
    assert list(cp.threads.values()) == [torch.get_num_threads()]


def test_onnxruntime_refuses_gradients():
    g = _graph()
    x = torch.randn(5, 8)
    p = gx.plan(g, inline_below=0)
    cp = compile_plan(p, "onnxruntime", example_inputs=(x,))
    with CompiledRunner(cp) as ex, pytest.raises(RuntimeError, match="task 'a0.*inference-only"):
        ex.run(p, x)


def test_unexportable_task_falls_back_with_a_warning_naming_it():
    g = gx.Graph("odd")
    x = g.input("x")
    pair = g.node("pair", lambda t: (t.tolist(), t), x)  # a list output: not exportable
    g.output(g.node("back", lambda p: p[1] * 2, pair), g.node("lin", nn.Linear(3, 3), x))
    p = gx.plan(g, inline_below=0, fuse_chains=False)
    t = torch.randn(2, 3)
    with pytest.warns(CompileFallbackWarning) as rec:
        cp = compile_plan(p, "onnxruntime", example_inputs=(t,))
    assert {str(w.message).split("'")[1] for w in rec} == {"pair", "back"}  # tuple in or out
    assert set(cp.fallbacks) == {"pair", "back"} and "lin" in cp
    with CompiledRunner(cp) as ex, torch.no_grad():
        for got, want in zip(ex.run(p, t), _reference(p, t), strict=True):
            torch.testing.assert_close(got, want)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        compile_plan(gx.plan(_graph()), "tvm", example_inputs=(torch.randn(1, 8),))


@pytest.mark.slow
def test_inductor_tasks_equal_reference():
    g = _graph()
    x = torch.randn(5, 8)
    p = gx.plan(g, inline_below=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # inductor imports deprecated jit bits
        cp = compile_plan(p, "inductor", example_inputs=(x,))
        assert not cp.fallbacks
        with CompiledRunner(cp) as ex, torch.no_grad():
            torch.testing.assert_close(ex.run(p, x), _reference(p, x), rtol=1e-4, atol=1e-5)


def test_onnxruntime_leaves_the_models_modes_as_they_were():
    """The exporter switches its module to eval and back: the user's eval modules stay eval."""
    pytest.importorskip("onnxruntime")
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
        gx.plan(gx.trace(m), example_inputs=(x,), backend="onnxruntime", inline_below=0,
                check=False)  # fmt: skip
        assert not any(mod.training for mod in m.modules())
        torch.testing.assert_close(m(x), ref)
