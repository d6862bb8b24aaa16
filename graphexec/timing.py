"""Timing side by side: how the command line and the demo say "faster", "slower" or "noise".

What it decides
---------------
* **Paired rounds, not lone times.** A time on a shared machine says as much about the
  machine as about the code. `paired` runs the candidate and its reference once per round,
  alternating which goes first (a run at all intra-op threads leaves OpenMP workers spinning
  that the next run pays for), and each round gives one ratio of two runs made moments apart.
* **The median ratio and the middle half.** `Speedup` keeps every round's ratio: its median
  is the figure, and the middle half of the rounds (25th to 75th percentile) is the spread.
  One slow round (a page fault, another process) moves neither.
* **A verdict that can say "within noise".** Faster when the whole middle half is above 1,
  slower when it is below, and *within noise* otherwise: a 1.04x whose rounds range from
  0.9x to 1.2x is not a result, and the tables say so instead of ranking it.
* **Enough rounds for a verdict** (`MIN_ROUNDS`, 3). One round has no middle half: its one
  ratio would be the verdict. With two, the 25th percentile is 3/4 of the lower ratio and 1/4
  of the higher, so one disturbed round (eager slowed by another process: 0.9x and 2.0x give a
  25th percentile of 1.18x) says "faster". From three on, each quartile lies between the median
  round and one neighbour, and one odd round cannot flip a verdict, only blur it into "within
  noise". The command line refuses fewer timed rounds.
* **The GPU.** Every clock read waits for queued GPU work first (`sync`).

Used by `graphexec.cli` (``run``, ``bench``) and `graphexec.demo`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MIN_ROUNDS", "Speedup", "paired", "speedup_table", "sync", "time_median"]

#: The fewest paired rounds a verdict is given from (module docstring).
MIN_ROUNDS = 3

#: A reference that ran this many times slower beside one candidate than beside the others
#: was disturbed by it (noise between rows of a quiet run stays within ~10%).
DISTURBED = 1.3


def sync() -> None:
    """Wait for queued GPU work, if CUDA is in use: it is asynchronous, a clock would lie."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _clock(fn: Callable[[], Any]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def time_median(
    fn: Callable[[], Any], repeat: int, tick: Callable[[], None] | None = None
) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call (GPU work included)."""
    fn()
    samples = []
    for _ in range(repeat):
        samples.append(_clock(fn))
        if tick:
            tick()
    return statistics.median(samples)


@dataclass(frozen=True)
class Speedup:
    """How a candidate compared with its reference over paired rounds.

    ``seconds`` and ``reference`` hold one time per round (the same rounds); a round's ratio
    is reference / candidate, so above 1 means faster than the reference.

    Examples
    --------
    >>> s = Speedup((0.010, 0.011, 0.009, 0.010), (0.020, 0.021, 0.019, 0.020))
    >>> round(s.median, 2), s.verdict
    (2.0, 'faster')
    >>> Speedup((1.0, 1.1, 0.9, 1.0), (1.1, 1.0, 0.95, 0.97)).verdict
    'within noise'
    """

    seconds: tuple[float, ...]
    reference: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(r / s for s, r in zip(self.seconds, self.reference, strict=True))

    @property
    def median(self) -> float:
        """The median of the rounds' ratios (not the ratio of medians)."""
        return statistics.median(self.ratios)

    @property
    def middle_half(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the rounds' ratios."""
        if len(self.ratios) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def verdict(self) -> str:
        """``faster``, ``slower`` or ``within noise`` (the middle half straddles 1)."""
        low, high = self.middle_half
        if low > 1.0:
            return "faster"
        if high < 1.0:
            return "slower"
        return "within noise"


def paired(fn: Callable[[], Any], reference: Callable[[], Any], rounds: int) -> Speedup:
    """Time ``fn`` against ``reference``: one warm-up each, then ``rounds`` rounds of one run
    each, alternating which runs first.

    Parameters
    ----------
    fn, reference : callable
        Called with no arguments; their results are ignored.
    rounds : int
        Rounds to time (at least 1; a verdict needs `MIN_ROUNDS`).

    Returns
    -------
    Speedup
        The times of both, round by round.

    Examples
    --------
    The verdict comes from this machine's clock, where a busy core can flip a round, so it is
    shown here and checked in tests/test_timing.py, on a clock of the test's own:

    >>> s = paired(lambda: sum(range(100)), lambda: sum(range(100_000)), rounds=5)
    >>> len(s.seconds), len(s.reference)  # one run of each per round
    (5, 5)
    >>> s.verdict  # doctest: +SKIP
    'faster'
    """
    fn()
    reference()
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(max(1, rounds)):
        if i % 2:
            mine.append(_clock(fn))
            theirs.append(_clock(reference))
        else:
            theirs.append(_clock(reference))
            mine.append(_clock(fn))
    return Speedup(tuple(mine), tuple(theirs))


def speedup_table(rows: Sequence[tuple[str, Speedup]], base: str) -> str:
    """One row per candidate: its median time, the median time of ``base`` in the same
    rounds, the median speedup, the middle half of the rounds' speedups and the verdict.

    ``base`` is timed beside each candidate, so each row has its own: where one is far slower
    than the others, a line under the table says so, without a cause (a candidate's leftover
    threads or processes, or a burst of load from elsewhere, look the same from here): that
    row's ratio compares with a slower reference, so read its medians too.

    Examples
    --------
    >>> fast = Speedup((0.001, 0.0011, 0.0009), (0.002, 0.002, 0.002))
    >>> print(speedup_table([("threads", fast)], "eager"))
                            median   eager beside it   speedup (middle half of 3 rounds)
    ------------------------------------------------------------------------------------
    threads                1.00 ms           2.00 ms    2.00x (1.91x-2.11x)  faster
    """
    n = max((len(s.seconds) for _, s in rows), default=0)
    beside = f"{base} beside it"
    header = (f"{'':<20}{'median':>10}{beside:>{max(18, len(beside) + 2)}}"
              f"   speedup (middle half of {n} rounds)")  # fmt: skip
    lines = [header, "-" * len(header)]
    width = max(18, len(beside) + 2) - 3
    refs = {label: statistics.median(s.reference) for label, s in rows}
    for label, s in rows:
        low, high = s.middle_half
        mine, theirs = statistics.median(s.seconds) * 1e3, refs[label] * 1e3
        lines.append(
            f"{label:<20}{mine:>7.2f} ms{theirs:>{width}.2f} ms"
            f"  {s.median:>6.2f}x ({low:.2f}x-{high:.2f}x)  {s.verdict}"
        )
    quiet = min(refs.values(), default=0.0)
    for label, ref in refs.items():
        if quiet > 0 and ref > DISTURBED * quiet:
            lines.append(
                f"({base} ran {ref / quiet:.1f}x slower beside {label} than beside the others: "
                "that row's ratio compares with a slower reference; read its medians too)"
            )
    return "\n".join(lines)
