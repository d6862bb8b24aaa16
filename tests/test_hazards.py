"""In-place ops: concurrency and levels must never change what a read sees.

Each graph is arranged so that, without the planner's ordering edges, every executor would
run the read and the write in the wrong order (their depths disagree with program order).
"""

from __future__ import annotations

import torch
import torch.nn as nn

import graphexec as gx


def slow(t: torch.Tensor) -> torch.Tensor:
    return (t * 1.0).tanh().tanh()


def test_read_after_write_sees_the_write(executor):
    """
    x -> h ; h -> s1 -> s2 -> inc (h.add_(s2.mean()))   program order: h, s1, s2, inc, read
              h ----------------------------> read       read is shallower than inc
    """
    g = gx.Graph("raw")
    h = g.node("h", lambda t: t * 2.0, g.input("x"))
    s2 = g.node("s2", slow, g.node("s1", slow, h))
    inc = g.node("inc", lambda t, s: t.add_(s.mean()), h, s2, mutates=[0])
    read = g.node("read", lambda t: t * 10.0, h)
    g.output(read=read, inc=inc)
    x = torch.randn(4, 8)
    eager_h = x * 2.0
    s = slow(slow(eager_h))
    eager_h.add_(s.mean())
    for p in (gx.plan(g), gx.plan(g, inline_below=0, fuse_chains=False)):
        assert ("inc", "read") in p.hazard_edges
        out = executor.run(p, x)
        torch.testing.assert_close(out["read"], eager_h * 10.0)
        torch.testing.assert_close(out["inc"], eager_h)


def test_write_after_read_waits_for_the_read(executor):
    """
    x -> h -> inc (h.add_(1))                     program order: h, r1, r2, read, inc
         h -> r1 -> r2 -> read (reads h)          inc is shallower than read
    """
    g = gx.Graph("war")
    h = g.node("h", lambda t: t * 2.0, g.input("x"))
    r2 = g.node("r2", slow, g.node("r1", slow, h))
    read = g.node("read", lambda t, r: t + r, h, r2)
    inc = g.node("inc", lambda t: t.add_(1.0), h, mutates=[0])
    g.output(read, inc)
    x = torch.randn(4, 8)
    eh = x * 2.0
    expected_read = eh + slow(slow(eh))
    for p in (gx.plan(g), gx.plan(g, inline_below=0, fuse_chains=False)):
        assert ("read", "inc") in p.hazard_edges
        read_out, inc_out = executor.run(p, x)
        torch.testing.assert_close(read_out, expected_read)
        torch.testing.assert_close(inc_out, eh + 1.0)


def test_mutating_node_is_never_dropped(local_executor):
    """x -> h ; h -> bump (h.mul_(3), its own output unused) ; output h."""
    g = gx.Graph("keep")
    h = g.node("h", lambda t: t + 1.0, g.input("x"))
    g.node("bump", lambda t: t.mul_(3.0), h, mutates=[0])
    g.output(h)
    p = gx.plan(g)
    assert p.dead == ()
    x = torch.ones(3)
    assert local_executor.run(p, x).tolist() == [6.0, 6.0, 6.0]


def test_inplace_through_an_alias_chain(local_executor):
    """x -> h -> a (h.relu_(), aliases h) -> b (a.mul_(2), aliases h) ; read(h) after both."""
    g = gx.Graph("alias")
    h = g.node("h", lambda t: t - 0.5, g.input("x"))
    a = g.node("a", lambda t: t.relu_(), h, mutates=[0])
    b = g.node("b", lambda t: t.mul_(2.0), a, mutates=[0])
    read = g.node("read", lambda t: t.sum(dim=1), h)
    g.output(read, b)
    x = torch.rand(4, 4)
    expected = ((x - 0.5).relu() * 2).sum(1)
    for p in (gx.plan(g), gx.plan(g, inline_below=0, fuse_chains=False)):
        assert ("b", "read") in p.hazard_edges
        torch.testing.assert_close(local_executor.run(p, x)[0], expected)


class Traced(nn.Module):
    """A traced model whose in-place ops have no data edge to their readers."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.deep = nn.Sequential(*[nn.Linear(16, 16) for _ in range(3)])

    def forward(self, x):
        h = self.a(x)
        r = self.deep(h)  # reads h before the in-place add, but deeper than it
        h.add_(1.0)
        q = self.c(h)  # reads h after the in-place add
        m = x > 0
        out = self.b(r).masked_fill_(m, 0.0)
        h2 = torch.relu_(q)
        return {"out": out, "q": q, "h": h, "h2": h2}


def test_traced_inplace_model_equals_eager(executor):
    model = Traced().eval()
    g = gx.trace(model)
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x)
        for p in (gx.plan(g), gx.plan(g, inline_below=0)):
            out = executor.run(p, x)
            for k in expected:
                torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-5)
