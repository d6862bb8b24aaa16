"""How graphexec writes numbers and names for people, the same in plan text, summaries and
pictures."""

from __future__ import annotations

__all__ = ["format_seconds", "lane_label"]


def format_seconds(seconds: float) -> str:
    """Seconds as a short human string: ``2.00 s``, ``1.50 ms``, ``12.0 µs``.

    >>> format_seconds(0.0015), format_seconds(12e-6), format_seconds(2)
    ('1.50 ms', '12.0 µs', '2.00 s')
    """
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def lane_label(lane: str) -> str:
    """A lane's name for people.

    >>> lane_label("MainThread"), lane_label("graphexec_1"), lane_label("tcp://10.0.0.2:4001")
    ('caller thread', 'pool thread 1', '10.0.0.2:4001')
    """
    if lane == "MainThread":
        return "caller thread"
    if lane.startswith("graphexec_"):
        return "pool thread " + lane.removeprefix("graphexec_")
    return lane.removeprefix("tcp://")
