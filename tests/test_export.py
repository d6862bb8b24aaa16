"""gx.trace of torch.export programs, and of plain modules with defaults or untraceable code."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import graphexec as gx
from tests.test_trace import assert_tree_close


class Mutating(nn.Module):
    """Two towers, then in-place writes export keeps (training IR) or functionalizes::

        x -> a (Linear, ReLU) -\\
        x -> b (Linear) -------+ add -> masked_fill_(mask) -> index_put_ -> head
    """

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.b = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, mask):
        y = self.a(x) + self.b(x)
        y.masked_fill_(mask, 0.0)
        y.index_put_((torch.tensor([0]),), torch.ones(8))
        return {"out": self.head(y), "y": y}


def _exported():
    model = Mutating().eval()
    x = torch.randn(4, 8)
    batch = torch.export.Dim("batch", min=2)
    dims = {"x": {0: batch}, "mask": {0: batch}}
    return model, torch.export.export(model, (x, x > 0), dynamic_shapes=dims)


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
@pytest.mark.parametrize("form", ["program", "module", "decomposed"])
def test_exported_program_with_in_place_ops_equals_eager(form, local_executor):
    model, ep = _exported()
    source = {"program": ep, "module": ep.module(), "decomposed": ep.run_decompositions()}[form]
    g = gx.trace(source)
    names = [n.name for n in g if not n.is_input]
    assert g.name == "Mutating" and g.inputs == ("x", "mask")
    assert names[0] == "check_inputs" and not any("guards" in n for n in names), names
    assert {"a.0", "b", "head"} <= set(names)  # partitions start at leaf-module calls
    x = torch.randn(6, 8)
    with torch.no_grad():
        expected = model(x, x > 0)
        for p in (gx.plan(g), gx.plan(g, inline_below=0), gx.plan(g, example_inputs=(x, x > 0))):
            assert_tree_close(local_executor.run(p, x, x > 0), expected)


def test_exports_checks_run_first_in_check_inputs():
    _, ep = _exported()
    g = gx.trace(ep)
    readers = [n.name for n in g if "check_inputs" in n.after]
    assert set(readers) >= {"a.0", "b"}  # every partition without a producer waits for it
    with pytest.raises(gx.NodeError, match="node 'check_inputs'"):
        gx.SequentialExecutor().run(gx.plan(g), torch.randn(4, 9), torch.zeros(4, 9) > 0)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x, scale=2.0, mask=None):
        y = self.a(x) * scale
        return y if mask is None else y.masked_fill(mask, 0.0)


def test_defaults_are_fixed_not_required_inputs():
    model, x = Scaled(), torch.randn(3, 4)
    g = gx.trace(model)
    assert g.inputs == ("x",)
    with torch.no_grad():
        torch.testing.assert_close(gx.SequentialExecutor().run(gx.plan(g), x), model(x))
        p = gx.plan(g, example_inputs=(x,))  # timed against the module, defaults and all
        torch.testing.assert_close(gx.SequentialExecutor().run(p, x), model(x))
        other = gx.trace(model, concrete_args={"scale": 3.0})
        assert other.inputs == ("x",)
        got = gx.SequentialExecutor().run(gx.plan(other, example_inputs=(x,)), x)
        torch.testing.assert_close(got, model(x, scale=3.0))
        kept = gx.trace(model, concrete_args={"scale": fx.PH})
        assert kept.inputs == ("x", "scale")
        torch.testing.assert_close(
            gx.SequentialExecutor().run(gx.plan(kept), x, 0.5), model(x, 0.5)
        )


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: fx cannot trace it
            return self.a(x)
        return x


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.gate = nn.Linear(4, 4), Gate()

    def forward(self, x):
        return self.gate(self.stem(x))


def test_untraceable_control_flow_names_the_submodule_and_the_ways_out():
    with pytest.raises(gx.UntraceableError) as info:
        gx.trace(Gated())
    message = str(info.value)
    assert info.value.node == "gate" and isinstance(info.value, fx.proxy.TraceError)
    assert "leaves=['gate']" in message and 'backend="graphexec"' in message
    model, x = Gated().eval(), torch.randn(2, 4)
    g = gx.trace(model, leaves=["gate"])  # the way out it names
    with torch.no_grad():
        torch.testing.assert_close(gx.SequentialExecutor().run(gx.plan(g), x), model(x))


class VmapMask(nn.Module):
    """A mask built with nested ``torch.vmap`` (as transformers builds GPT-2's), then two
    towers::

        x -> arange -> vmap(vmap(<=)) -> mask -\\
        x -> a --------------------------------+ masked_fill + b(x) -> head
    """

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        rows, cols = torch.arange(x.shape[0]), torch.arange(8)
        mask = torch.vmap(lambda i: torch.vmap(lambda j: j <= i + 3)(cols))(rows)
        return self.head(self.a(x).masked_fill(mask, 0.0) + self.b(x))


def test_vmap_inside_forward_is_one_node_that_keeps_its_levels(local_executor):
    """Export writes the vmap as level push/pop calls nobody reads: dropped or split across
    nodes, the batched tensors escape their level (functorch raises)."""
    model, x = VmapMask().eval(), torch.randn(4, 8)
    g = gx.trace(torch.export.export(model, (x,)))
    names = [n.name for n in g if not n.is_input]
    assert {"a", "b", "head"} <= set(names) and len(names) <= 6, names
    with torch.no_grad():
        for p in (gx.plan(g), gx.plan(g, inline_below=0), gx.plan(g, example_inputs=(x,))):
            torch.testing.assert_close(local_executor.run(p, x), model(x))


class Cast(nn.Module):
    """A cast two modules read: a partition of its own, named after its first node::

        x -> to(float32) -> a -\\
                        \\-> b --+ add
    """

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        y = x.to(torch.float32)
        return self.a(y) + self.b(y)


@pytest.mark.parametrize("entry", ["fx", "export"])
def test_a_node_named_like_a_module_method_runs_in_a_graph_module(entry):
    """``to`` is an attribute of every ``nn.Module``: `GraphModule` registers node modules by
    name, and a node named ``to`` could not be registered."""
    model, x = Cast(), torch.randn(2, 4, dtype=torch.float64)
    g = gx.trace(model if entry == "fx" else torch.export.export(model, (x,)))
    assert "to_" in set(g.nodes), list(g.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gx.GraphModule(g, executor="sequential")(x), model(x))


class Widen(nn.Module):
    """A cast of a sum two modules read; export checks the cast's input (nobody reads the
    check)::

        x -> a -\\
        x -> b --+ add -> [check] -> to(float64) -> c -\\
                                                \\-> d --+ add
    """

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.c, self.d = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()

    def forward(self, x):
        wide = (self.a(x) + self.b(x)).to(torch.float64)
        return self.c(wide) + self.d(wide)


def test_a_check_on_an_intermediate_value_runs_inside_its_partition():
    """A partition of its own would be read by nobody: dropped as dead (DeadNodeWarning, an
    error under pytest), and the check with it."""
    model, x = Widen(), torch.randn(2, 4)
    g = gx.trace(torch.export.export(model, (x,)))
    checking = [n.name for n in g if "_assert_tensor_metadata" in getattr(n.fn, "code", "")]
    assert checking == ["add"], [n.name for n in g]
    with torch.no_grad():
        torch.testing.assert_close(gx.SequentialExecutor().run(gx.plan(g), x), model(x))


# -- gx.trace(model, example_inputs=...): fx where it traces, else torch.export ----------------
class EitherInput(nn.Module):
    """A transformers-style signature: every argument defaults to None, and ``forward`` raises
    when the one it needs is missing (as ``input_ids=None`` fixed by fx makes it)."""

    def __init__(self):
        super().__init__()
        self.embed, self.a, self.b = nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, input_ids=None, inputs_embeds=None, scale=2.0):
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.a(h) + scale * self.b(h)


def test_a_library_exception_while_tracing_is_an_untraceable_error_with_its_message():
    with pytest.raises(gx.UntraceableError) as info:
        gx.trace(EitherInput())
    message = str(info.value)
    assert "ValueError: You have to specify either input_ids or inputs_embeds" in message
    assert "input_ids=None" in message and "example_inputs=" in message  # why, and the way out
    assert isinstance(info.value.__cause__, ValueError)


def test_example_inputs_fix_only_the_arguments_not_given(local_executor):
    model, ids = EitherInput().eval(), torch.randint(0, 50, (2, 5))
    g = gx.trace(model, example_inputs=(ids,))
    assert g.imported_by == "torch.fx" and g.inputs == ("input_ids",)
    assert g.source is model  # the rest fixed to its defaults: the model itself, called plainly
    with torch.no_grad():
        expected = model(ids)
        p = gx.plan(g, example_inputs=(ids,))
        torch.testing.assert_close(local_executor.run(p, ids), expected)
        embeds = torch.randn(2, 5, 8)
        other = gx.trace(model, example_kwargs={"inputs_embeds": embeds, "scale": 0.5})
        assert other.inputs == ("inputs_embeds",) and other.source.__wrapped__ is model
        torch.testing.assert_close(other.source(embeds), model(inputs_embeds=embeds, scale=0.5))
        got = local_executor.run(gx.plan(other), embeds)
        torch.testing.assert_close(got, model(inputs_embeds=embeds, scale=0.5))


class FinfoMask(nn.Module):
    """``torch.finfo`` of a proxy's dtype stops fx (a TypeError inside torch), as in
    transformers' attention masks; export runs it::

        x -> a -\\
        x -> b --+ add -> masked_fill(mask, finfo.min) -> head
    """

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x, mask=None, bias=None):
        y = (self.a(x) + self.b(x)).masked_fill(mask, torch.finfo(x.dtype).min / 2)
        return self.head(y.softmax(-1) if bias is None else y.softmax(-1) + bias)


def test_a_model_fx_cannot_trace_imports_through_export_and_keeps_the_users_module():
    model, x = FinfoMask().eval(), torch.randn(4, 8)
    mask = x > 1
    g = gx.trace(model, example_inputs=(x, mask))
    assert g.imported_by.startswith(
        "torch.export (batch size dynamic): torch.fx could not trace FinfoMask"
    )
    assert "finfo" in g.imported_by and "imported by torch.export" in str(g)
    assert g.inputs == ("x", "mask") and g.source is model  # no wrapper between call and model
    with torch.no_grad():
        expected = model(x, mask)
        p = gx.plan(g, example_inputs=(x, mask))
        assert p.as_is in (None, model)  # "as it is" runs the user's model, not export's
        with gx.ThreadExecutor() as ex:
            for plan in (p, gx.plan(g, inline_below=0)):
                torch.testing.assert_close(ex.run(plan, x, mask), expected)
        gm = gx.GraphModule(g)
        torch.testing.assert_close(gm(x, mask), expected)
        gm.close()


def test_export_route_with_keyword_inputs_calls_the_users_module_with_them():
    model, x = FinfoMask().eval(), torch.randn(4, 8)
    mask, bias = x > 1, torch.randn(8)
    g = gx.trace(model, (x,), {"bias": bias, "mask": mask})
    assert g.inputs == ("x", "bias", "mask") and g.source.__wrapped__ is model
    with torch.no_grad():
        expected = model(x, mask, bias)
        torch.testing.assert_close(g.source(x, bias, mask), expected)
        got = gx.SequentialExecutor().run(gx.plan(g), x, bias=bias, mask=mask)
        torch.testing.assert_close(got, expected)


def test_when_fx_and_export_both_fail_the_error_says_both():
    with pytest.raises(gx.UntraceableError) as info:
        gx.trace(Gated(), example_inputs=(torch.randn(2, 4),))
    message = str(info.value)
    assert "torch.fx cannot trace" in message and "torch.export cannot export" in message
    assert "leaves=['gate']" in message and info.value.node == "gate"


def test_the_export_route_takes_any_batch_size_unless_asked_to_fix_it(local_executor):
    """Export fixes every size it is not told is dynamic; gx.trace marks the batch."""
    model, x = FinfoMask().eval(), torch.randn(4, 8)
    g = gx.trace(model, example_inputs=(x, x > 1))
    fixed = gx.trace(model, example_inputs=(x, x > 1), dynamic_shapes=None)
    assert "batch size dynamic" in g.imported_by
    assert "every size as in the example" in fixed.imported_by
    with torch.no_grad():
        for rows in (1, 7):
            x2 = torch.randn(rows, 8)
            got = local_executor.run(gx.plan(g), x2, x2 > 1)
            torch.testing.assert_close(got, model(x2, x2 > 1))
        with pytest.raises(gx.NodeError, match=r"check_inputs.*Guard failed: x.size\(\)\[0\] == 4"):
            local_executor.run(gx.plan(fixed), x2, x2 > 1)


def test_an_example_that_is_a_view_does_not_tie_the_graph_to_its_strides(local_executor):
    """Export guards the strides of a view given as an example; gx.trace exports contiguous
    copies, so contiguous inputs (what a Dask worker receives) and views both run."""
    model, wide = FinfoMask().eval(), torch.randn(6, 16)
    g = gx.trace(model, example_inputs=(wide[:4, :8], wide[:4, :8] > 0))
    with torch.no_grad():
        for x in (wide[:, 8:], wide[:, 8:].contiguous(), wide[:3, :8].clone()):
            torch.testing.assert_close(local_executor.run(gx.plan(g), x, x > 0), model(x, x > 0))


class Cache:
    """A library's cache object in a model's output: no tensor, no pytree node."""

    def __init__(self, t: torch.Tensor):
        self.t = t


class Cached(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x, use_cache=True):
        y = self.a(x).clamp(min=torch.finfo(x.dtype).min)  # fx stops at finfo of a proxy
        return (y, Cache(y)) if use_cache else (y,)


def test_an_output_export_does_not_know_names_the_argument_that_leaves_it_out():
    model, x = Cached().eval(), torch.randn(2, 8)
    with pytest.raises(gx.UntraceableError) as info:
        gx.trace(model, example_inputs=(x,))
    message = str(info.value)
    assert f"output holds a {__name__}.Cache" in message
    assert "example_kwargs={'use_cache': False}" in message
    g = gx.trace(model, example_inputs=(x,), example_kwargs={"use_cache": False})
    with torch.no_grad():
        (got,) = gx.SequentialExecutor().run(gx.plan(g), x)
        torch.testing.assert_close(got, model(x, use_cache=False)[0])


class WhisperLike(nn.Module):
    """An encoder-decoder called with ``(features, None, decoder_ids)``::

        features -> enc -\\
        decoder_ids -> dec --+ add
    """

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(8, 8), nn.Embedding(10, 8)

    def forward(self, features, attention_mask=None, decoder_input_ids=None):
        h = self.enc(features)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.dec(decoder_input_ids) + h.mean(1, keepdim=True)


@pytest.mark.parametrize("entry", ["export", "example_inputs"])
def test_a_none_argument_is_no_graph_input(entry, local_executor):
    """Export records the None as a placeholder with its value fixed: one graph input per
    tensor leaf, and the source puts the None back."""
    model = WhisperLike().eval()
    features, ids = torch.randn(2, 5, 8), torch.randint(0, 10, (2, 3))
    call = (features, None, ids)
    g = gx.trace(torch.export.export(model, call) if entry == "export" else model, call)
    assert g.inputs == ("features", "decoder_input_ids")
    with torch.no_grad():
        expected = model(*call)
        torch.testing.assert_close(g.source(features, ids), expected)
        for p in (gx.plan(g), gx.plan(g, example_inputs=(features, ids))):
            torch.testing.assert_close(local_executor.run(p, features, ids), expected)
        gm = gx.GraphModule(g, executor="sequential")
        torch.testing.assert_close(gm(features, decoder_input_ids=ids), expected)
