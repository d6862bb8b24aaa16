"""gx.trace: existing nn.Modules become graphs whose outputs equal the module's."""

from __future__ import annotations

import re
import sys

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import graphexec as gx


class Inception(nn.Module):
    """A small GoogLeNet-style block: four branches joined by cat, then a classifier."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.b1 = nn.Conv2d(c, 8, 1)
        self.b2 = nn.Sequential(
            nn.Conv2d(c, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 8, 3, padding=1)
        )
        self.b3 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 5, padding=2))
        self.b4 = nn.Conv2d(c, 8, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(F.max_pool2d(x, 3, 1, 1))], 1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(F.relu(y), 1), 1))


class TwoTowers(nn.Module):
    """Image and text towers; a dict output with a tuple inside."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
        self.text = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 16))
        self.proj = nn.Linear(16, 16)

    def forward(self, img, tokens):
        i = F.normalize(self.image(img), dim=-1)
        t = F.normalize(self.proj(self.text(tokens).mean(1)), dim=-1)
        return {"logits": i @ t.T, "emb": (i, t)}


def assert_tree_close(a, b):
    if isinstance(b, dict):
        assert a.keys() == b.keys()
        for k in b:
            assert_tree_close(a[k], b[k])
    elif isinstance(b, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_tree_close(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inception_cnn(executor):
    model = Inception().eval()
    g = gx.trace(model)
    names = [n.name for n in g if not n.is_input]
    assert {"b1", "b2.0", "b2.2", "b3.0", "b4", "head"} <= set(names)
    assert not any(n.startswith(("cat", "flatten", "relu")) for n in names), names  # folded
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = model(x)
        for p in (gx.plan(g), gx.plan(g, inline_below=0)):
            assert_tree_close(executor.run(p, x), expected)


def test_two_towers_with_dict_output(executor):
    model = TwoTowers().eval()
    g = gx.trace(model)
    assert g.inputs == ("img", "tokens")
    img, tokens = torch.randn(4, 32), torch.randint(0, 100, (4, 7))
    with torch.no_grad():
        expected = model(img, tokens)
        out = executor.run(gx.plan(g, inline_below=0), img, tokens)
    assert_tree_close(out, expected)


def test_already_traced_graph_module_is_taken_as_is():
    model = Inception().eval()
    traced = fx.symbolic_trace(model)
    traced.graph.eliminate_dead_code()
    g = gx.trace(traced, name="pretraced")
    assert g.name == "pretraced"
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad(), gx.ThreadExecutor() as ex:
        assert_tree_close(ex.run(gx.plan(g), x), model(x))


def test_coarser_granularity_whole_branches():
    model = Inception().eval()
    g = gx.trace(model, leaves=["b2", "b3"])
    names = [n.name for n in g if not n.is_input]
    assert "b2" in names and "b3" in names and "b2.0" not in names
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert_tree_close(gx.ThreadExecutor().run(gx.plan(g), x), model(x))


def test_traced_graph_module_shares_the_models_parameters_and_trains():
    model = TwoTowers()
    gm = gx.GraphModule(gx.trace(model), "threads")
    assert {id(p) for p in gm.parameters()} == {id(p) for p in model.parameters()}
    img, tokens = torch.randn(4, 32), torch.randint(0, 100, (4, 7))
    gm(img, tokens)["logits"].sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(img, tokens)["logits"].sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6)
    gm.close()


class WhisperLike(nn.Module):
    """``attention_mask=None`` between two tensors, as Whisper takes it; ``finfo=True``:
    ``torch.finfo`` of a proxy's dtype stops fx, so it imports through torch.export."""

    def __init__(self, finfo: bool = False):
        super().__init__()
        self.enc, self.dec = nn.Linear(8, 8), nn.Embedding(10, 8)
        self.finfo = finfo

    def forward(self, features, attention_mask=None, decoder_input_ids=None):
        h = self.enc(features)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        out = self.dec(decoder_input_ids) + h.mean(1, keepdim=True)
        return out.clamp(min=torch.finfo(out.dtype).min) if self.finfo else out


@pytest.mark.parametrize("route", ["torch.fx", "torch.export"])
def test_a_graph_traced_with_a_none_takes_the_modules_own_call(route, local_executor):
    """gx.trace(model, example_inputs=(features, None, ids)) makes a graph of 2 inputs; the
    model's own 3-argument call (the None where it was, or by name) runs it too."""
    model = WhisperLike(finfo=route == "torch.export").eval()
    features, ids = torch.randn(2, 5, 8), torch.randint(0, 10, (2, 3))
    g = gx.trace(model, example_inputs=(features, None, ids))
    assert g.imported_by.startswith(route) and g.inputs == ("features", "decoder_input_ids")
    calls = [
        ((features, None, ids), {}),  # the module's own call
        ((features, ids), {}),  # the graph's, as before
        ((features,), {"attention_mask": None, "decoder_input_ids": ids}),
        ((features, None), {"decoder_input_ids": ids}),
    ]
    with torch.no_grad():
        expected = model(features, None, ids)
        p = gx.plan(g)
        for args, kwargs in calls:
            torch.testing.assert_close(local_executor.run(p, *args, **kwargs), expected)
        measured = gx.plan(g, example_inputs=(features, None, ids))  # planned on it, too
        torch.testing.assert_close(local_executor.run(measured, features, None, ids), expected)
        gm = gx.GraphModule(g, executor=local_executor, example_inputs=(features, None, ids))
        for args, kwargs in calls:
            torch.testing.assert_close(gm(*args, **kwargs), expected)
        mask = torch.ones(2, 5)
        with pytest.raises(gx.ArityError, match=r"attention_mask is a tensor of shape \(2, 5\), "
                           r"but the trace fixed attention_mask=None"):  # fmt: skip
            gm(features, mask, ids)
        with pytest.raises(gx.ArityError, match="fixed attention_mask=None"):
            local_executor.run(p, features, ids, attention_mask=mask)
        with pytest.raises(gx.ArityError, match="takes 2 inputs"):
            local_executor.run(p, features, None, ids, ids)
    assert "fixed by the trace: attention_mask=None" in str(g)


def _scaled(x, y, scale=2.0):
    return torch.relu(x) * scale + y


def _branchy(x):
    if x.sum() > 0:
        return x
    return -x


def test_a_plain_function_is_traced_with_fx(local_executor):
    """fx traces functions as it traces a forward: gx.trace(lambda t: t + 1) raised
    AttributeError: 'function' object has no attribute 'forward'."""
    g = gx.trace(lambda t: t + 1)
    assert g.inputs == ("t",) and g.imported_by == "torch.fx"
    x, y = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(local_executor.run(gx.plan(g), x), x + 1)
    g = gx.trace(_scaled)  # a default is fixed, as for a module's forward
    assert g.name == "_scaled" and g.inputs == ("x", "y") and g.source is _scaled
    torch.testing.assert_close(local_executor.run(gx.plan(g), x, y), _scaled(x, y))
    torch.testing.assert_close(local_executor.run(gx.plan(g), x, y, 2.0), _scaled(x, y))
    with pytest.raises(gx.UntraceableError, match=r"gx.trace\(_branchy\): .* in _branchy "
                       r"\(.*test_trace.py:\d+\).*nn.Module.*torch.compile\(fn"):  # fmt: skip
        gx.trace(_branchy, example_inputs=(x,))


@pytest.mark.parametrize(
    ("what", "says"),
    [
        (nn.Linear, r"got the class nn.Linear: pass an instance, gx.trace\(nn.Linear\(...\)\)"),
        (TwoTowers, r"got the class TwoTowers: pass an instance"),
        (torch.relu, r"got relu .*call it from a Python function and trace that"),
        (3, r"got int"),
    ],
)
def test_what_trace_cannot_take_is_a_type_error_saying_what_to_pass(what, says):
    with pytest.raises(TypeError, match=r"gx.trace takes an nn.Module instance, .*; " + says):
        gx.trace(what)


def _finfo_graph_module() -> fx.GraphModule:
    """An fx GraphModule whose generated forward calls torch.finfo on its input: a proxy
    raises there, inside generated code, where fx prints its own traceback to stderr."""
    graph = fx.Graph()
    graph.output(graph.call_function(torch.finfo, (graph.placeholder("x"),)))
    return fx.GraphModule(nn.Module(), graph)


class _Chatty(nn.Module):
    def __init__(self, fail: bool):
        super().__init__()
        self.child = _finfo_graph_module() if fail else nn.Identity()

    def forward(self, x):
        print("a model's own words while tracing", file=sys.stderr)
        return self.child(x)


def test_fxs_own_traceback_stays_out_of_stderr_and_its_line_is_in_the_error(capfd):
    with pytest.raises(gx.UntraceableError) as info:
        gx.trace(_Chatty(fail=True))
    err = capfd.readouterr().err
    assert "Call using an FX-traced Module" not in err and "Traceback" not in err
    assert err == "a model's own words while tracing\n"  # what is not fx's passes on
    assert re.search(r"submodule 'child' \(line \d+ of its generated forward: finfo = "
                     r"torch.finfo\(x\)\): TypeError: torch.finfo", str(info.value))  # fmt: skip
    gx.trace(_Chatty(fail=False))
    assert capfd.readouterr().err == "a model's own words while tracing\n"
