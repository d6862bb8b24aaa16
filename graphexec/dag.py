"""Walks over a DAG given as flat predecessor lists (networkx is too slow for 100k nodes).

The planner, the pictures and the run record all walk task DAGs; these are the walks they
share. Items are strings; ``pred[t]`` lists the items ``t`` waits for.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["generations", "lexicographic_order", "longest_path", "bottom_levels"]


def lexicographic_order(
    items: list[str], pred: Mapping[str, Sequence[str]], key: Mapping[str, int]
) -> list[str]:
    """``items`` in topological order, ties broken by smallest ``key`` (as
    ``networkx.lexicographical_topological_sort``, on plain lists). Items on a cycle, and
    everything after them, are left out: a result shorter than ``items`` means a cycle.

    >>> lexicographic_order(["b", "a", "c"], {"a": [], "b": ["c"], "c": []},
    ...                     {"a": 1, "b": 0, "c": 2})
    ['a', 'c', 'b']
    """
    ranked = list(items)
    keys = list(map(key.__getitem__, ranked))
    if not all(map(operator.le, keys, keys[1:])):
        ranked.sort(key=key.__getitem__)
    seen: set[str] = set()
    for t in ranked:  # the common case: ordered by key is already topological
        if not seen.issuperset(pred[t]):
            break
        seen.add(t)
    else:
        return ranked
    if len(set(keys)) == len(keys):
        return _by_rank(ranked, pred)
    waiting = {t: len(pred[t]) for t in items}
    users: dict[str, list[str]] = {t: [] for t in items}
    for t in items:
        for p in pred[t]:
            users[p].append(t)
    ready = [(key[t], t) for t in items if waiting[t] == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, t = heapq.heappop(ready)
        out.append(t)
        for u in users[t]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (key[u], u))
    return out


def _by_rank(ranked: list[str], pred: Mapping[str, Sequence[str]]) -> list[str]:
    """`lexicographic_order` for distinct keys, ``ranked`` sorted by them: Kahn's walk over
    rank numbers (a heap of ints, not of (key, name) pairs)."""
    rank = {t: i for i, t in enumerate(ranked)}
    waiting = [0] * len(ranked)
    users: list[list[int]] = [[] for _ in ranked]
    for i, t in enumerate(ranked):
        ps = pred[t]
        waiting[i] = len(ps)
        for p in ps:
            users[rank[p]].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]  # ascending: already a heap
    out: list[str] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(ranked[i])
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return out


def generations(order: Sequence[str], pred: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Depth levels (``networkx.topological_generations``) of items in a topological order."""
    depth: dict[str, int] = {}
    levels: list[list[str]] = []
    at = depth.__getitem__
    for t in order:
        ps = pred[t]
        d = (at(ps[0]) if len(ps) == 1 else max(map(at, ps))) + 1 if ps else 0
        depth[t] = d
        if d == len(levels):
            levels.append([])
        levels[d].append(t)
    return levels


def longest_path(
    order: Iterable[str], pred: Callable[[str], Sequence[str]], cost: Callable[[str], float]
) -> tuple[float, tuple[str, ...]]:
    """The costliest path through a DAG (``order`` topological): its cost and its items.

    ``pred(t)`` may name items outside ``order``; they count as finished at time 0.

    >>> longest_path("abc", {"a": [], "b": ["a"], "c": ["a"]}.__getitem__,
    ...              {"a": 1.0, "b": 2.0, "c": 3.0}.__getitem__)
    (4.0, ('a', 'c'))
    """
    finish: dict[str, float] = {}
    prev: dict[str, str | None] = {}

    def start(d: str) -> float:
        return finish.get(d, 0.0)

    for t in order:
        ps = pred(t)
        best = (ps[0] if len(ps) == 1 else max(ps, key=start)) if ps else None
        finish[t] = cost(t) + (finish.get(best, 0.0) if best is not None else 0.0)
        prev[t] = best if best in finish else None
    if not finish:
        return 0.0, ()
    end = max(finish, key=finish.__getitem__)
    path = [end]
    while (p := prev[path[-1]]) is not None:
        path.append(p)
    return finish[end], tuple(reversed(path))


def bottom_levels(
    order: list[str], pred: Mapping[str, Sequence[str]], cost: Mapping[str, float]
) -> dict[str, float]:
    """Each item's cost plus the costliest path after it (``order`` is topological)."""
    after: dict[str, float] = dict.fromkeys(order, 0.0)
    bottom: dict[str, float] = {}
    for t in reversed(order):
        bottom[t] = cost[t] + after[t]
        for p in pred[t]:
            if bottom[t] > after[p]:
                after[p] = bottom[t]
    return bottom
