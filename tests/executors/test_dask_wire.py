"""How a node crosses to a worker (`graphexec.executors.dask.wire`), without a cluster.

A worker loads what `pack` made with plain ``pickle.loads``; here that happens in this
process, and the Dask tests (test_dask_models) do it on real workers.
"""

from __future__ import annotations

import operator
import pickle
import threading

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import graphexec as gx
from graphexec.executors.base import collect_outputs
from graphexec.executors.dask.wire import NodeCopy, ShippedFx, UnsendableNodeError, pack, unpack


def _slice_by_size() -> fx.GraphModule:
    """``x + pos[:, : x.size(1)]`` (``pos`` a buffer) written as a graph, as transformers'
    tracer writes position ids. Re-traced by plain fx, which is how an fx module loads itself
    from a pickle, ``pos`` is a real tensor sliced by a proxy: "slice indices must be
    integers"."""
    root = nn.Module()
    root.register_buffer("pos", torch.arange(10.0).unsqueeze(0))
    g = fx.Graph()
    x, pos = g.placeholder("x"), g.get_attr("pos")
    n = g.call_method("size", (x, 1))
    g.output(g.call_function(operator.add, (x, g.call_function(
        operator.getitem, (pos, (slice(None), slice(0, n)))))))  # fmt: skip
    return fx.GraphModule(root, g)


def test_an_fx_module_loads_from_its_code_without_a_retrace():
    gm, x = _slice_by_size(), torch.randn(3, 5)
    expected = x + torch.arange(5.0)
    with pytest.raises(TypeError, match="slice indices"):  # why graphexec packs fx modules itself
        pickle.loads(pickle.dumps(gm))
    shipped = unpack(pack(gm))
    assert isinstance(shipped, ShippedFx) and not isinstance(shipped, fx.GraphModule)
    torch.testing.assert_close(shipped(x), expected)
    again = unpack(pack(shipped))  # a worker's copy, fetched by another worker
    torch.testing.assert_close(again(x), expected)
    assert type(again).__name__ == type(gm).__name__


class FinfoMask(nn.Module):
    """fx cannot trace ``torch.finfo`` of a proxy's dtype: gx.trace exports it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.register_buffer("scale", torch.full((8,), 0.5))

    def forward(self, x, mask):
        y = (self.a(x) + self.b(x) * self.scale).masked_fill(mask, torch.finfo(x.dtype).min / 2)
        return y.softmax(-1)


def test_every_node_of_an_exported_graph_travels_and_its_guards_still_check():
    model, x = FinfoMask().eval(), torch.randn(4, 8)
    g = gx.trace(model, example_inputs=(x, x > 0))
    assert g.imported_by.startswith("torch.export")
    nodes = {n.name: n for n in g if not n.is_input}
    copies = {name: unpack(pack(NodeCopy.of(node))).node for name, node in nodes.items()}

    def run(*inputs: torch.Tensor):  # the graph, node after node, on the unpacked copies
        env = dict(zip(g.inputs, inputs, strict=True))
        for name in nodes:  # in the order the graph was built: inputs before readers
            env[name] = copies[name](*(r.resolve(env[r.node]) for r in copies[name].inputs))
        return collect_outputs(g, env)

    x2 = torch.randn(6, 8)  # another batch size: export's batch dimension is dynamic
    with torch.no_grad():
        torch.testing.assert_close(run(x2, x2 > 0), model(x2, x2 > 0))
        with pytest.raises(AssertionError, match="Guard failed") as err:  # 7 features, not 8
            run(x2[:, :7], x2[:, :7] > 0)
    assert "x.size()[1] == 8" in str(err.value) and "dynamic_shapes=" in str(err.value)


def test_exports_own_module_in_a_graph_built_by_hand_travels_with_its_guards():
    model, x = FinfoMask().eval(), torch.randn(4, 8)
    program = torch.export.export(model, (x, x > 0)).module()
    with pytest.raises(Exception, match="pickle"):  # its guard module does not pickle
        pickle.dumps(program)
    g = gx.Graph("g")
    g.node("program", program, g.input("x"), g.input("mask"))
    shipped = unpack(pack(NodeCopy.of(g.nodes["program"]))).node.fn
    with torch.no_grad():
        torch.testing.assert_close(shipped(x, x > 0), model(x, x > 0))
        with pytest.raises(AssertionError, match="Guard failed"):  # fixed to 4 rows
            shipped(x[:3], x[:3] > 0)


def test_functions_defined_here_travel_by_value():
    def local(t: torch.Tensor) -> torch.Tensor:
        return t * 3

    g = gx.Graph("g")
    g.node("f", local, g.input("x"))
    fn = unpack(pack(NodeCopy.of(g.nodes["f"]))).node.fn
    torch.testing.assert_close(fn(torch.ones(2)), torch.full((2,), 3.0))


class Locked(nn.Linear):
    def __init__(self):
        super().__init__(4, 4)
        self.guard = {"lock": threading.Lock()}


def test_a_node_that_does_not_pickle_is_named_with_the_object_and_the_way_out():
    g = gx.Graph("g")
    g.node("locked", nn.Sequential(nn.ReLU(), Locked()), g.input("x"))
    with pytest.raises(UnsendableNodeError) as err:
        NodeCopy.of(g.nodes["locked"])
    assert err.value.node == "locked" and err.value.path == "1.guard.lock"
    message = str(err.value)
    assert "node 'locked'" in message and "1.guard.lock (lock)" in message
    assert "does not pickle" in message and "executor='threads'" in message
