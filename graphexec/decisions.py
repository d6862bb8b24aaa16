"""Decision records: what a measured step decided, as data that prints as a sentence.

What it decides
---------------
Every decision of the tuning layer (``gx.plan``'s steps and the re-checks after it) is a
`Decision`: which step made it (one of the step names below), what it chose, each
candidate it weighed with the seconds it measured (or estimated from node times, and marked
so), the margin the choice had to win by, and the sentence ``print(plan)`` shows, which is
``str(record)``. Code reads the fields, never the sentence:

>>> d = Decision(OVERLAP, "overlapped", "overlap kept: overlapping branches ran 1.50x faster",
...              (Candidate("one by one", 0.003), Candidate("overlapped", 0.002)), 0.95)
>>> d.step, d.choice, d.seconds("overlapped"), str(d)[:12]
('overlap', 'overlapped', 0.002, 'overlap kept')

They are plain, frozen and JSON-able (`Decision.to_json` / `Decision.from_json`): the decision
cache (`graphexec.cache`) stores them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BUDGET", "CACHE", "CHECK", "COMPILED", "FUSION", "MODULE", "OVERLAP", "RECHECK", "SPLIT",
    "STEPS", "Candidate", "Decision", "candidates", "last",
]  # fmt: skip

#: Horizontal fusion: one record per group of identical modules found, one for the trial.
FUSION = "horizontal fusion"
#: The thread budget: the caller's intra-op threads or one.
BUDGET = "thread budget"
#: Overlapping same-level branches, or running the tasks one by one on the calling thread.
OVERLAP = "overlap"
#: Tasks compiled by a backend, or run eagerly.
COMPILED = "compiled tasks"
#: The plan, or the module the graph was traced from, run as it is.
MODULE = "module as it is"
#: Data parallelism: the batch split into shards, or run whole.
SPLIT = "data parallel"
#: A re-check after the calls drifted (`graphexec.budget.recheck`).
RECHECK = "re-check"
#: A plan rebuilt from the decision cache.
CACHE = "cache"
#: A note on the measurements themselves (node times and a trial that disagree).
CHECK = "check"
STEPS = (FUSION, BUDGET, OVERLAP, COMPILED, MODULE, SPLIT, RECHECK, CACHE, CHECK)


@dataclass(frozen=True)
class Candidate:
    """One way a step weighed: its name, seconds per call (None: not timed), and whether the
    seconds were estimated from node times rather than measured by running it."""

    name: str
    seconds: float | None = None
    estimated: bool = False


@dataclass(frozen=True)
class Decision:
    """What a step decided (see the module docstring); ``str(decision)`` is its sentence."""

    step: str
    choice: str | None
    text: str
    candidates: tuple[Candidate, ...] = ()
    #: The share of the reference's time the choice had to take below to be kept (None: no
    #: margin applied, e.g. a note).
    margin: float | None = None
    #: Whether the candidates were run side by side (False: decided from estimates).
    measured: bool = True
    #: Step-specific facts a later step needs (plain JSON values), e.g. a fused group's members.
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"Decision: unknown step {self.step!r} (steps: {', '.join(STEPS)})")

    def __str__(self) -> str:
        return self.text

    def seconds(self, name: str) -> float | None:
        """The seconds of candidate ``name`` (None when it was not weighed or not timed)."""
        return next((c.seconds for c in self.candidates if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "choice": self.choice, "text": self.text,
            "candidates": [[c.name, c.seconds, c.estimated] for c in self.candidates],
            "margin": self.margin, "measured": self.measured, "detail": dict(self.detail),
        }  # fmt: skip

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Decision:
        """The record `to_json` wrote (raises KeyError, TypeError or ValueError otherwise)."""
        found = tuple(Candidate(str(n), None if s is None else float(s), bool(e))
                      for n, s, e in record["candidates"])  # fmt: skip
        margin = record["margin"]
        choice = record["choice"]
        return cls(str(record["step"]), None if choice is None else str(choice),
                   str(record["text"]), found, None if margin is None else float(margin),
                   bool(record["measured"]), dict(record["detail"]))  # fmt: skip


def candidates(seconds: Mapping[str, float | None], estimated: bool = False
               ) -> tuple[Candidate, ...]:  # fmt: skip
    """Candidates from a name -> seconds mapping, in its order."""
    return tuple(Candidate(n, s, estimated) for n, s in seconds.items())


def last(decisions: Iterable[Decision], step: str) -> Decision | None:
    """The last decision of ``step`` in ``decisions``, or None.

    >>> last([Decision(CACHE, "reused", "reused from the cache")], MODULE) is None
    True
    """
    found = None
    for d in decisions:
        if d.step == step:
            found = d
    return found
