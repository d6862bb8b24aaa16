"""The tuning policy: every rule and threshold a measured decision is made by, in one place.

What it decides
---------------
Everything the tuning layer keeps or drops is decided by comparing measurements with the
numbers below: how much faster a change must run to be kept, when a trial stops, when a
candidate is out of the running, when calls have drifted, what is too cheap to dispatch.
They live in one frozen `Policy` (today's values are the defaults), which ``gx.plan``,
``gx.GraphModule``, ``gx.compile_backend`` and `graphexec.drift.Watch` take as ``policy=``:

>>> import graphexec as gx
>>> strict = gx.Policy(gain=0.90)   # keep a change only when it saves 10%
>>> strict.gain, gx.Policy().gain
(0.9, 0.95)

The decision cache (`graphexec.cache`) keys every measured plan with the policy's `digest`,
so a plan measured under other rules is measured again, never reused.

Where each rule is used: the trials (`graphexec.trials`: ``gain``, ``trial_*``, ``lost``,
``drop``, ``collapse``, ``reruns``, ``floor``), the planner's inline threshold
(`graphexec.planner`: ``inline_below``), the steps of ``gx.plan`` (`graphexec.tune`,
`graphexec.budget`, `graphexec.hfuse`, `graphexec.split`: ``source_margin``, ``hopeless``,
``try_unlevered``, ``budget_slack``, ``disagree``, ``fuse_member_below``,
``fused_call_rounds``, ``slow_planning``), the drift watch (`graphexec.drift`: ``drift``,
``window``, ``share``, ``slow_share``, ``gap_max``, ``gap_min``, ``recheck_calls``,
``cache_drift``) and the
GPU (`graphexec.executors.cuda`: ``gpu_inline_below``; `graphexec.gputime`: ``hold_tries``,
``hold_margin``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["DEFAULT", "Policy"]


@dataclass(frozen=True)
class Policy:
    """Every rule of the tuning layer (see the module docstring for where each is used).

    Trials
        ``gain`` (0.95): a change is kept when the plan with it takes below this share of
        the plan without it, side by side (5% beats hand-off costs and noise).
        ``trial_rounds`` (3) rounds at least; then until the answer is clear, or
        ``trial_passes`` (12) runs of the candidates, ``trial_seconds`` (0.5) seconds or
        ``trial_max`` (41) rounds. A challenger ``lost`` (1.3) times slower than the fastest
        twice in a row stops running (median trials); the reference, and every candidate of
        a mean trial (thread counts), only at ``drop`` (3.0), which is also how much slower
        the caller's threads must be than one thread in the node times to count as
        collapsed. A mean trial compares means only where some candidate's mean is
        ``collapse`` (1.5) times its median. An implausible trial (a candidate faster than
        ``floor`` (0.9) of the same work shared over the lanes) is run again at most
        ``reruns`` (2) times, then set aside.
    Planning
        ``inline_below`` (50 µs): tasks cheaper than this run inline, never dispatched.
        ``source_margin`` (1.03): a traced graph's best plan is kept when it takes at most
        this share of the module it came from; otherwise the module runs as it is.
        ``try_unlevered`` (False): try a plan with no lever of its own (the module's ops one
        after another at the caller's threads) against the module; measured: they never beat
        it by ``gain``, and the trial cost 10-20 forward passes. ``hopeless`` (1.25): an
        exported graph whose best way is estimated at this many times its module's time is
        not tried at all. ``budget_slack`` (1.5): one intra-op thread is tried when the node
        times at one thread add up to below this many times those at the caller's (node
        timing hides a collapse that whole runs show). ``disagree`` (3.0): node costs and a
        trial of the same plan that disagree by this factor are flagged.
        ``fuse_member_below`` (200 µs): horizontal fusion groups members faster than this;
        ``fused_call_rounds`` (5) rounds check fused calls one by one.
        ``slow_planning`` (2.0 s): planning longer than this says what it measures.
    Drift (after planning)
        ``drift`` (1.5): calls whose median over ``window`` (8) calls is this many times
        slower or faster than the baseline have drifted. A re-check may cost ``share`` (3%)
        of the time watched since the last one (``slow_share``, 0.3%, for a plan that kept
        the caller's threads). A re-check pauses the median idle time between calls before
        each run, at most ``gap_max`` (0.1 s), none below ``gap_min`` (1 ms). Before one
        was measured, a re-check is guessed to cost ``recheck_calls`` (12) calls. A plan
        reused from the decision cache is re-checked once, at once, when the median of its
        first ``window`` calls is ``cache_drift`` (1.15) times slower or faster than the
        seconds the cache measured: it was decided under another load.
    GPU
        ``gpu_inline_below`` (2 µs): the inline threshold of plans for CUDA streams (a
        kernel launch, not a thread hand-off, is what dispatching costs there). Node times on
        a GPU are taken with the queue held behind a spin ``hold_margin`` (2.0) times the
        host's enqueue time of the run before, tried ``hold_tries`` (4) times with a spin
        twice as long before samples are kept unheld (`graphexec.gputime`).
    """

    gain: float = 0.95
    trial_rounds: int = 3
    trial_max: int = 41
    trial_seconds: float = 0.5
    trial_passes: int = 12
    lost: float = 1.3
    drop: float = 3.0
    collapse: float = 1.5
    reruns: int = 2
    floor: float = 0.9
    inline_below: float = 50e-6
    source_margin: float = 1.03
    try_unlevered: bool = False
    hopeless: float = 1.25
    budget_slack: float = 1.5
    disagree: float = 3.0
    fuse_member_below: float = 200e-6
    fused_call_rounds: int = 5
    slow_planning: float = 2.0
    drift: float = 1.5
    window: int = 8
    share: float = 0.03
    slow_share: float = 0.003
    gap_max: float = 0.1
    gap_min: float = 0.001
    recheck_calls: int = 12
    cache_drift: float = 1.15
    gpu_inline_below: float = 2e-6
    hold_tries: int = 4
    hold_margin: float = 2.0

    def __post_init__(self) -> None:
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
               if f.name in ("lost", "drop", "collapse", "drift", "disagree", "budget_slack",
                             "cache_drift")
               and not getattr(self, f.name) > 1]  # fmt: skip
        bad += [f"{n}={getattr(self, n)!r}" for n in ("trial_rounds", "trial_max", "window")
                if getattr(self, n) < 1]  # fmt: skip
        bad += [f"{n}={getattr(self, n)!r}" for n in ("gain", "floor", "slow_share",
                "inline_below", "gpu_inline_below", "source_margin") if getattr(self, n) < 0]
        if self.share <= 0:
            bad.append(f"share={self.share!r}")
        if bad:
            raise ValueError(
                "Policy: lost, drop, collapse, drift, disagree, budget_slack and cache_drift "
                "take > 1, "
                "trial_rounds, trial_max and window >= 1, share > 0, gain, floor, slow_share "
                f"and the thresholds >= 0; got {', '.join(bad)}"
            )

    def digest(self) -> str:
        """A short hash of every rule: part of the decision cache's key.

        >>> Policy().digest() == Policy().digest() != Policy(gain=0.9).digest()
        True
        """
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes: object) -> Policy:
        """A copy with some rules changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


#: The rules graphexec plans by when none are given.
DEFAULT = Policy()
