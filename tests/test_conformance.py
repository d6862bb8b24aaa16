"""Every executor and schedule returns what the sequential reference and eager PyTorch return.

Each hand-drawn graph is written twice: as a graphexec graph and as plain eager torch code over
the same modules. Plans are made twice: with the default cost rules, and with
``inline_below=0`` so that every node is its own dispatched task (the most concurrency).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import graphexec as gx

D = 32


def lin(d_in: int = D, d_out: int = D) -> nn.Module:
    return nn.Linear(d_in, d_out)


def check(executor: gx.Executor, g: gx.Graph, inputs: tuple, expected) -> None:
    for p in (gx.plan(g), gx.plan(g, inline_below=0.0, fuse_chains=False)):
        reference = gx.SequentialExecutor().run(p, *inputs)
        out = executor.run(p, *inputs)
        assert_same(out, reference, exact=isinstance(executor, gx.SequentialExecutor))
        assert_same(out, expected)


def assert_same(a, b, exact: bool = False) -> None:
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys()
        for k in b:
            assert_same(a[k], b[k], exact)
    elif isinstance(b, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y, exact)
    else:
        # Intra-op thread counts differ between lanes: GEMM sums in another order.
        torch.testing.assert_close(a, b, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5)


def test_chain(executor):
    """x -> l0 -> relu -> l1 -> relu -> l2"""
    g = gx.Graph("chain")
    h = g.input("x")
    layers = [lin() for _ in range(3)]
    for i, layer in enumerate(layers):
        h = g.node(f"l{i}", layer, h)
        if i < 2:
            h = g.node(f"relu{i}", torch.relu, h)
    g.output(h)
    x = torch.randn(4, D)
    with torch.no_grad():
        expected = layers[2](torch.relu(layers[1](torch.relu(layers[0](x)))))
    check(executor, g, (x,), expected)


def test_diamond(executor):
    """
        x
       / \\
      a   b
       \\ /
       add
    """
    g = gx.Graph("diamond")
    x = g.input("x")
    a, b = lin(), lin()
    g.output(g.node("add", gx.add(), g.node("a", a, x), g.node("b", b, x)))
    xs = torch.randn(4, D)
    with torch.no_grad():
        check(executor, g, (xs,), a(xs) + b(xs))


def test_wide_fan_out_stack_mean(executor):
    """x -> b0..b7 -> stack(dim=1) -> mean(dim=1) -> head"""
    g = gx.Graph("wide")
    x = g.input("x")
    branches = [nn.Sequential(lin(), nn.ReLU(), lin()) for _ in range(8)]
    head = lin(D, 10)
    refs = [g.node(f"b{i}", m, x) for i, m in enumerate(branches)]
    s = g.node("stack", gx.stack(dim=1), *refs)
    g.output(g.node("head", head, g.node("pool", gx.mean(dim=1), s)))
    xs = torch.randn(4, D)
    with torch.no_grad():
        expected = head(torch.stack([m(xs) for m in branches], 1).mean(1))
    check(executor, g, (xs,), expected)


def test_inception_block_with_cat(executor):
    """x -> {1x1, 1x1->3x3, 1x1->5x5, pool->1x1} -> cat(dim=1) -> 1x1"""
    c = 8
    b1 = nn.Conv2d(c, 4, 1)
    b2 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
    b3 = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding=2))
    b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 4, 1))
    out = nn.Conv2d(18, 8, 1)
    g = gx.Graph("inception")
    x = g.input("x")
    cat = g.node(
        "cat", gx.cat(dim=1), *(g.node(f"b{i}", m, x) for i, m in enumerate([b1, b2, b3, b4], 1))
    )
    g.output(g.node("out", out, cat))
    xs = torch.randn(2, c, 8, 8)
    with torch.no_grad():
        expected = out(torch.cat([b1(xs), b2(xs), b3(xs), b4(xs)], 1))
    check(executor, g, (xs,), expected)


def test_multi_output_node_and_several_outputs(executor):
    """
    x -> split (returns a tuple) -> [0] -> a ;  [1] -> b ;  outputs {"a": a, "b": b, "both": a+b}
    and a second graph input y read by b.
    """
    g = gx.Graph("multi")
    x, y = g.input("x"), g.input("y")
    la, lb = lin(), lin()
    split = g.node("split", lambda t: (t * 2, t - 1), x)
    a = g.node("a", la, split[0])
    b = g.node("b", lambda u, v: lb(u) * v, split[1], y)
    g.output(a=a, b=b, both=g.node("both", gx.add(), a, b))
    xs, ys = torch.randn(4, D), torch.randn(4, D)
    with torch.no_grad():
        ea, eb = la(xs * 2), lb(xs - 1) * ys
    check(executor, g, (xs, ys), {"a": ea, "b": eb, "both": ea + eb})


def test_tuple_output_and_input_passthrough(executor):
    g = gx.Graph("tuple_out")
    x = g.input("x")
    la = lin()
    g.output(g.node("a", la, x), x)
    xs = torch.randn(3, D)
    with torch.no_grad():
        check(executor, g, (xs,), (la(xs), xs))


def test_inputs_by_keyword(local_executor):
    g = gx.Graph("kw")
    a, b = g.input("a"), g.input("b")
    g.output(g.node("sub", torch.sub, a, b))
    one, two = torch.ones(2), torch.full((2,), 2.0)
    assert local_executor.run(gx.plan(g), b=one, a=two).tolist() == [1.0, 1.0]


# -- random DAGs ------------------------------------------------------------------------------
@st.composite
def random_dags(draw):
    """A random DAG over [B, D] tensors: linears, relus, sums, means, cat+linear, tuple splits."""
    n_inputs = draw(st.integers(1, 2))
    n_nodes = draw(st.integers(1, 10))
    specs = []
    for i in range(n_nodes):
        available = n_inputs + i
        kind = draw(st.sampled_from(["linear", "relu", "add", "mean", "catlin", "split"]))
        arity = 1 if kind in ("linear", "relu", "split") else draw(st.integers(2, 3))
        srcs = [draw(st.integers(0, available - 1)) for _ in range(arity)]
        pick = draw(st.integers(0, 1))
        specs.append((kind, srcs, pick))
    read = {s for _, srcs, _ in specs for s in srcs}
    assume(all(i in read for i in range(n_inputs)))  # an unread input warns at plan time
    return n_inputs, specs, draw(st.integers(0, 2**16))


def build_random(n_inputs: int, specs: list) -> tuple[gx.Graph, callable]:
    """The graphexec graph and an independent eager interpreter of the same DAG."""
    g = gx.Graph("random")
    refs = [g.input(f"x{i}") for i in range(n_inputs)]
    fns, splits = [], set()
    for i, (kind, srcs, pick) in enumerate(specs):
        if kind == "linear":
            fn = lin()
        elif kind == "relu":
            fn = torch.relu
        elif kind == "add":
            fn = gx.add()
        elif kind == "mean":
            fn = gx.mean()
        elif kind == "catlin":
            layer = lin(D * len(srcs), D)
            fn = _CatLinear(layer)
        else:
            fn = _Split()
        args = []
        for s in srcs:
            r = refs[s]
            args.append(r[pick] if (s - n_inputs) in splits else r)
        refs.append(g.node(f"n{i}", fn, *args))
        fns.append((fn, srcs, pick))
        if kind == "split":
            splits.add(i)
    consumed = {s for _, srcs, _ in specs for s in srcs}
    sinks = [j for j in range(n_inputs, len(refs)) if j not in consumed] or [len(refs) - 1]
    g.output(*[refs[j][0] if (j - n_inputs) in splits else refs[j] for j in sinks])

    def eager(*xs):
        vals = list(xs)
        for fn, srcs, pick in fns:
            args = [vals[s][pick] if (s - n_inputs) in splits else vals[s] for s in srcs]
            vals.append(fn(*args))
        outs = [vals[j][0] if (j - n_inputs) in splits else vals[j] for j in sinks]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return g, eager


class _CatLinear(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *xs):
        return self.layer(torch.cat(xs, dim=1))


class _Split(nn.Module):
    def forward(self, x):
        return x.tanh(), x.sigmoid()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(random_dags())
def test_random_dags(executor, dag):
    n_inputs, specs, seed = dag
    torch.manual_seed(seed)
    g, eager = build_random(n_inputs, specs)
    xs = tuple(torch.randn(3, D) for _ in range(n_inputs))
    with torch.no_grad():
        expected = eager(*xs)
    check(executor, g, xs, expected)
