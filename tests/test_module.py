"""GraphModule is a real nn.Module: parameters, state, modes, dtype, and autograd like eager."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn as nn

import graphexec as gx

W = 128  # wide enough that branches are dispatched to worker threads


def towers(n: int = 3) -> tuple[gx.Graph, list[nn.Module], nn.Module]:
    g = gx.Graph("towers")
    x = g.input("x")
    branches = [nn.Sequential(nn.Linear(W, W), nn.Dropout(0.5), nn.Tanh()) for _ in range(n)]
    head = nn.Linear(W, 1)
    s = g.node("stack", gx.stack(dim=1), *(g.node(f"t{i}", m, x) for i, m in enumerate(branches)))
    g.output(g.node("head", head, g.node("pool", gx.mean(dim=1), s)))
    return g, branches, head


def eager(branches, head, x):
    return head(torch.stack([m(x) for m in branches], 1).mean(1))


@pytest.mark.parametrize("schedule", ["levels", "dataflow"])
def test_gradients_equal_eager_through_threads(schedule):
    g, branches, head = towers()
    gm = gx.GraphModule(g, gx.ThreadExecutor(schedule=schedule))
    gm.eval()
    assert gm.plan.parallel
    x = torch.randn(16, W)
    gm(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in gm.named_parameters()}
    gm.zero_grad()
    eager(branches, head, x).square().sum().backward()
    for n, p in gm.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5)
    gm.executor.close()


def test_training_step_updates_what_runs():
    g, branches, head = towers()
    with gx.GraphModule(g, "threads") as gm:
        gm.eval()
        opt = torch.optim.SGD(gm.parameters(), lr=0.1)
        x = torch.randn(8, W)
        before = gm(x).detach()
        gm(x).sum().backward()
        opt.step()
        after = gm(x).detach()
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, eager(branches, head, x).detach(), rtol=1e-5, atol=1e-5)


def test_parameters_state_dict_and_load():
    g, branches, head = towers(2)
    gm = gx.GraphModule(g, "sequential")
    names = {n for n, _ in gm.named_parameters()}
    assert names == {
        "nodes.t0.0.weight",
        "nodes.t0.0.bias",
        "nodes.t1.0.weight",
        "nodes.t1.0.bias",
        "nodes.head.weight",
        "nodes.head.bias",
    }
    g2, _, _ = towers(2)
    gm2 = gx.GraphModule(g2, "sequential")
    gm2.load_state_dict(gm.state_dict())
    gm.eval(), gm2.eval()
    x = torch.randn(4, W)
    torch.testing.assert_close(gm(x), gm2(x))


def test_train_and_eval_reach_the_nodes():
    g, branches, _ = towers(2)
    gm = gx.GraphModule(g, "threads")
    gm.eval()
    assert not any(m.training for m in branches)
    x = torch.randn(64, W)
    torch.testing.assert_close(gm(x), gm(x))  # dropout off
    gm.train()
    assert all(m.training for m in branches)
    assert not torch.equal(gm(x), gm(x))  # dropout on
    gm.close()


def test_to_dtype():
    g, branches, head = towers(2)
    gm = gx.GraphModule(g, "threads").eval().to(torch.float64)
    x = torch.randn(4, W, dtype=torch.float64)
    out = gm(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, eager(branches, head, x))
    gm.close()


def test_deepcopy_gives_an_independent_working_module():
    g, _, _ = towers(2)
    gm = gx.GraphModule(g, "threads").eval()
    twin = copy.deepcopy(gm)
    x = torch.randn(4, W)
    torch.testing.assert_close(gm(x), twin(x))
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    assert not torch.allclose(gm(x), twin(x))
    gm.close(), twin.close()


class _Probe(nn.Module):
    """Records, on whichever thread runs it, the torch modes it sees."""

    def __init__(self, log: list):
        super().__init__()
        self.layer, self.log = nn.Linear(W, W), log

    def forward(self, x):
        self.log.append(
            (
                threading.current_thread().name,
                torch.is_grad_enabled(),
                torch.is_inference_mode_enabled(),
                torch.is_autocast_enabled("cpu"),
            )
        )
        return self.layer(x)


def probe_graph(log: list) -> gx.Graph:
    g = gx.Graph("probe")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *(g.node(f"p{i}", _Probe(log), x) for i in range(3))))
    return g


@pytest.mark.parametrize("schedule", ["levels", "dataflow"])
def test_worker_threads_run_under_the_callers_modes(schedule):
    log: list = []
    ex = gx.ThreadExecutor(schedule=schedule)
    p = gx.plan(probe_graph(log))
    x = torch.randn(2, W)
    cases = {
        "no_grad": (torch.no_grad, (False, False, False)),
        "inference": (torch.inference_mode, (False, True, False)),
        "autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), (True, False, True)),
        "grad": (torch.enable_grad, (True, False, False)),
    }
    for name, (mode, expected) in cases.items():
        log.clear()
        with mode():
            out = ex.run(p, x)
        workers = [entry for entry in log if entry[0].startswith("graphexec")]
        assert workers, f"{name}: no branch ran on a worker thread"
        assert all(entry[1:] == expected for entry in log), (name, log)
        if name == "autocast":
            assert out.dtype == torch.bfloat16
        if name == "inference":
            assert out.is_inference()
    ex.close()


def test_nodes_named_like_module_methods_are_registered():
    """A node may be called ``to``, ``float`` or ``keys``: its module is registered with a
    trailing underscore, and trains and saves like any other."""
    g = gx.Graph("names")
    x = g.input("x")
    a = g.node("to", nn.Linear(W, W), x)
    g.output(g.node("float", nn.Linear(W, W), g.node("keys", nn.Linear(W, W), a)))
    gm = gx.GraphModule(g, "sequential")
    assert {"nodes.to_.weight", "nodes.float_.weight", "nodes.keys_.weight"} <= set(gm.state_dict())
    x = torch.randn(4, W)
    expected = g.nodes["float"].fn(g.nodes["keys"].fn(g.nodes["to"].fn(x)))
    torch.testing.assert_close(gm(x), expected)
    gm(x).sum().backward()
    assert g.nodes["to"].fn.weight.grad is not None


def test_nodes_whose_registered_names_meet_are_named():
    g = gx.Graph("clash")
    x = g.input("x")
    g.output(g.node("a__b", nn.Linear(W, W), g.node("a.b", nn.Linear(W, W), x)))
    with pytest.raises(gx.GraphError, match="nodes 'a.b' and 'a__b' would both be registered"):
        gx.GraphModule(g)
