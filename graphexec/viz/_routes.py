"""Where the Gantt's critical-path arrows go: from one task's bar to the next, never across
the bar of a task that is not on the hop.

A hop of the measured critical path joins the end of task ``a`` to the start of task ``b``.
A straight line does when nothing is in its way (``b`` just after ``a``, on the same or the
next lane). Otherwise the arrow leaves ``a`` through its edge near its end, runs along the
gutter between two lanes (where no bar is ever drawn) and enters ``b`` through its edge near
its start::

    lane 0  [ a ]              [ b ]          a -> b on one lane, c and d between them:
    lane 0  [ a ][  c  ][ d ]  [ b ]          the straight line would cross c and d,
               '-------------------'  gutter  so the arrow runs in the gutter below

When the lanes between ``a`` and ``b`` have bars where the arrow would go down, it goes along
``a``'s gutter, steps across at an x that is free on every lane in between, and goes along
``b``'s gutter. Only if every candidate crosses a bar is the straight line kept.

Coordinates are the Gantt's data coordinates: x in ms, y the lane's row (0 at the top); a bar
covers ``row ± HALF``. Everything here is plain data, so the routes are tested without
drawing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Bar", "crosses", "route"]

#: Half a bar's height, in rows (`graphexec.viz.timeline` draws bars this tall).
HALF = 0.35
#: Offset from a lane's centre to the middle of the gutter beside it.
GUTTER = 0.5

Point = tuple[float, float]


@dataclass(frozen=True)
class Bar:
    """One task's bar: from ``x0`` to ``x1`` (ms) on lane ``row``."""

    x0: float
    x1: float
    row: int


def route(a: Bar, b: Bar, bars: Sequence[Bar], inset: float) -> list[Point]:
    """The arrow from the end of ``a`` to the start of ``b``: a polyline crossing no bar.

    Parameters
    ----------
    a, b : Bar
        The hop's two tasks (``b`` depends on ``a``).
    bars : sequence of Bar
        Every bar of the picture, ``a`` and ``b`` included.
    inset : float
        How far (ms) from ``a``'s end and ``b``'s start the arrow leaves and enters a bar's
        edge when it cannot go straight; at most half the bar.

    Returns
    -------
    list of (x, y)
        The first candidate (straight, then through gutters) that crosses no bar; the
        straight line if all do.

    Examples
    --------
    >>> a, c, b = Bar(0, 10, 0), Bar(10, 20, 0), Bar(20, 30, 0)
    >>> route(a, b, [a, c, b], inset=1.0)
    [(9.0, 0.35), (9.0, 0.5), (21.0, 0.5), (21.0, 0.35)]
    >>> route(a, c, [a, c, b], inset=1.0)
    [(10, 0.0), (10, 0.0)]
    """
    candidates = list(_candidates(a, b, bars, inset))
    return next((c for c in candidates if not crosses(c, bars)), candidates[0])


def _candidates(a: Bar, b: Bar, bars: Sequence[Bar], inset: float) -> Iterator[list[Point]]:
    yield [(a.x1, float(a.row)), (b.x0, float(b.row))]
    down = 1 if b.row >= a.row else -1  # towards b's lane; below a lane for a hop along it
    xs = a.x1 - min(inset, (a.x1 - a.x0) / 2)
    xe = b.x0 + min(inset, (b.x1 - b.x0) / 2)
    start = (xs, a.row + down * HALF)
    end = (xe, b.row + (HALF if a.row == b.row else -down * HALF))
    near_a = a.row + down * GUTTER
    near_b = near_a if a.row == b.row else b.row - down * GUTTER
    yield [start, (xs, near_b), (xe, near_b), end]
    yield [start, (xs, near_a), (xe, near_a), end]
    for xm in _crossings(a, b, bars, xs, xe):
        yield [start, (xs, near_a), (xm, near_a), (xm, near_b), (xe, near_b), end]


def _crossings(a: Bar, b: Bar, bars: Sequence[Bar], xs: float, xe: float) -> list[float]:
    """Where an arrow may step from ``a``'s gutter to ``b``'s: bar ends and the middles of
    the gaps between them on the lanes in between, nearest ``b`` first."""
    low, high = sorted((a.row, b.row))
    between = [bar for bar in bars if low < bar.row < high]
    edges = sorted({xs, xe, *(x for bar in between for x in (bar.x0, bar.x1))})
    middles = [(p + q) / 2 for p, q in zip(edges, edges[1:], strict=False)]
    lo, hi = sorted((xs, xe))
    return sorted((x for x in edges + middles if lo <= x <= hi), key=lambda x: abs(x - xe))


def crosses(polyline: Sequence[Point], bars: Sequence[Bar]) -> bool:
    """Whether any segment of ``polyline`` passes through the inside of a bar (touching a
    bar's edge, as an arrow leaving or entering it does, is not crossing).

    >>> bar = Bar(10, 20, 0)
    >>> crosses([(0, 0), (30, 0)], [bar]), crosses([(0, 0.5), (30, 0.5)], [bar])
    (True, False)
    """
    return any(
        _segment_enters(p, q, bar) for p, q in zip(polyline, polyline[1:], strict=False)
        for bar in bars
    )  # fmt: skip


def _segment_enters(p: Point, q: Point, bar: Bar) -> bool:
    """Liang-Barsky clipping of segment p-q against the bar shrunk by a hair: a piece of
    positive length inside means the segment enters the bar."""
    ex = 1e-9 * max(1.0, abs(bar.x0), abs(bar.x1))
    box = (bar.x0 + ex, bar.x1 - ex, bar.row - HALF + 1e-9, bar.row + HALF - 1e-9)
    if box[0] >= box[1]:
        return False  # a bar too thin to cross
    (x, y), (qx, qy) = p, q
    dx, dy = qx - x, qy - y
    t0, t1 = 0.0, 1.0
    for pk, qk in ((-dx, x - box[0]), (dx, box[1] - x), (-dy, y - box[2]), (dy, box[3] - y)):
        if pk == 0:
            if qk <= 0:
                return False  # parallel to this side and outside it
            continue
        t = qk / pk
        if pk < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    return t0 < t1
