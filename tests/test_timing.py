"""Side-by-side timing (`graphexec.timing`): what the CLI and the demo call faster or noise.

No assertion here depends on how fast this machine is or how busy: the times are given, or
the candidates run on a clock of the test's own (`tests.clocks`).
"""

from __future__ import annotations

import pytest

from graphexec import timing
from graphexec.timing import Speedup, paired, speedup_table
from tests.clocks import counted


def test_paired_alternates_which_runs_first():
    """A run at all intra-op threads leaves OpenMP workers spinning that the next run pays
    for: the candidate and the reference must take turns going first."""
    calls: list[str] = []
    paired(lambda: calls.append("fn"), lambda: calls.append("ref"), rounds=4)
    rounds = [tuple(calls[i : i + 2]) for i in range(2, len(calls), 2)]  # after the warm-ups
    assert calls[:2] == ["fn", "ref"]
    assert rounds == [("ref", "fn"), ("fn", "ref"), ("ref", "fn"), ("fn", "ref")]


def test_paired_tells_faster_from_slower(monkeypatch):
    """Work that differs 200-fold, on a clock that only the work moves: on the real clock of a
    busy machine a preempted run can flip a round, and two flipped rounds of 7 flip the
    verdict."""
    calls, cost = counted(monkeypatch, timing)
    fast, slow = cost("fast", 0.001), cost("slow", 0.2)
    s = paired(fast, slow, rounds=7)
    assert calls == {"fast": 8, "slow": 8}  # a warm-up and 7 rounds each
    assert s.ratios == pytest.approx((200.0,) * 7) and s.verdict == "faster"
    assert paired(slow, fast, rounds=7).verdict == "slower"


@pytest.mark.parametrize(
    ("seconds", "reference", "verdict"),
    [
        ((1.0, 1.0, 1.0, 1.0), (2.0, 2.1, 1.9, 2.0), "faster"),
        ((2.0, 2.1, 1.9, 2.0), (1.0, 1.0, 1.0, 1.0), "slower"),
        ((1.0, 1.0, 1.0, 1.0), (1.2, 0.9, 1.1, 0.85), "within noise"),  # median 1.0x
        ((1.0, 1.0, 1.0, 1.0), (1.3, 1.25, 0.9, 0.95), "within noise"),  # median 1.1x
    ],
)
def test_verdict_from_the_middle_half(seconds, reference, verdict):
    assert Speedup(seconds, reference).verdict == verdict


def test_one_outlier_round_decides_nothing():
    """Nine rounds at 2x and one round where the candidate stalled 50-fold: still faster, at
    2x, where a mean of times would say 0.2x."""
    s = Speedup((1.0,) * 9 + (50.0,), (2.0,) * 10)
    assert s.verdict == "faster" and s.median == pytest.approx(2.0)
    assert sum(s.reference) / sum(s.seconds) < 0.4


def test_speedup_table_says_the_verdict_and_the_spread():
    text = speedup_table(
        [("threads", Speedup((1.0, 1.0, 1.0), (2.0, 2.0, 2.0))),
         ("dask", Speedup((2.0, 2.0, 2.0), (2.4, 1.6, 2.0)))],
        "eager",
    )  # fmt: skip
    lines = text.splitlines()
    assert "middle half of 3 rounds" in lines[0] and "eager beside it" in lines[0]
    assert lines[2].startswith("threads") and lines[2].endswith("faster")
    assert "(2.00x-2.00x)" in lines[2]
    assert lines[3].startswith("dask") and lines[3].endswith("within noise")
    assert len(lines) == 4  # eager ran alike beside both: no note


def test_a_reference_slowed_by_what_a_candidate_leaves_running_is_said():
    """Eager beside a Dask cluster can run 5x slower (the cluster's threads and processes
    keep the cores after each call): the table says so instead of letting the ratio stand
    alone."""
    text = speedup_table(
        [("threads", Speedup((1.0,) * 3, (1.0,) * 3)),
         ("dask", Speedup((6.0,) * 3, (5.0,) * 3))],
        "eager",
    )  # fmt: skip
    assert "eager ran 5.0x slower beside dask than beside the others" in text
