"""The drift check: notice when calls stop running as the plan measured, and say when to re-try.

A plan is measured under one load. When another process starts or stops using the cores, the
thread budget and the overlap decision can flip (torch's intra-op threads collapse when one
core is taken: measured here, 2-23x slower). `GraphModule` times each call with one
``perf_counter`` pair and hands the seconds to a `Watch`, which answers "re-check now, because
..." or nothing:

* **Drift.** The median of the last ``window`` calls against the baseline is beyond
  ``factor`` either way: the load arrived or left. The baseline is the seconds the plan
  measured (its trial, or its node times), and after a re-check the median of the next
  window of calls (calls that train take longer than the ``no_grad`` trial for that alone).
* **Probe.** A plan that kept a load-dependent choice (a thread budget of its own, or overlap)
  runs about as fast when the load leaves (a one-thread lane does not get faster when the
  other core frees up), so its calls cannot show that the choice went stale: it is
  re-checked anyway, whenever the allowance below permits.
* **Slow probe.** A plan that kept the caller's threads (more than one) was judged in one
  trial, under the load of that moment; with one core busy, a trial in a calm moment can keep
  threads that collapse right after (measured: a BERT-like model planned that way ran 2.3x
  slower than at one thread, and its calls stayed inside the drift factor of the trial's
  time). It is re-checked too, at a tenth of the allowance (``slow_share``, 0.3%).
* **Idle gaps.** The watch also keeps the idle time between calls (`Watch.gap`): a re-check
  pauses that long (up to the policy's ``gap_max``) before each run of its trial, so it
  measures the calls
  as they come. On this 2-core VM, after 50-100 ms idle torch's 2 intra-op threads ran a 1 ms
  BERT-like model in 12-13 ms and 1 thread in 2.3 ms; back-to-back runs show neither.
* **From the cache.** A plan reused from the decision cache was decided under the load of
  another moment (measured: GoogLeNet planned on a quiet machine and reused with one core
  busy ran 2.3x slower than eager at one thread for 70 calls, inside the allowance below).
  Its first window of calls is compared with the seconds the cache measured, and when the
  median is ``cache_drift`` (1.15) times away either way, it is re-checked at once, once.
* **Allowance.** A re-check runs the candidates side by side (`graphexec.budget.recheck`). It is
  allowed only once the calls watched since the last one add up to the last re-check's cost
  divided by ``share`` (3%): the watching costs a few percent of the time watched, at most.

Every threshold is a rule of the `graphexec.policy.Policy` the watch is given (``drift``,
``window``, ``share``, ``slow_share``, ``gap_max``, ``gap_min``, ``recheck_calls``,
``cache_drift``), and the clock is injectable too, so a test can force a drift without
sleeping or loading the machine.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

import torch

from .decisions import CACHE
from .plans import Plan
from .policy import DEFAULT, Policy
from .units import format_seconds

__all__ = ["Watch"]


class Watch:
    """Watches call times and says when the plan's decisions should be re-tried.

    Parameters
    ----------
    policy : Policy
        The rules (``drift``, ``window``, ``share``, ``slow_share``, ``gap_max``, ``gap_min``,
        ``recheck_calls``); the arguments below override one each.
    factor : float
        Drift: the window's median beyond ``factor`` times the baseline, or below it divided
        by ``factor`` (default: the policy's ``drift``).
    window : int
        Calls whose median is compared.
    share : float
        A re-check is allowed once it costs at most this share of the time watched since the
        last one.
    slow_share : float
        The same for the slow probe of a plan that kept the caller's threads.
    clock : callable
        Seconds, as ``time.perf_counter`` (the default) gives them.

    Examples
    --------
    >>> w = Watch(window=2, share=1.0)
    >>> w.start(None)
    >>> [w.observe(0.01) for _ in range(4)]  # the first window sets the baseline
    [None, None, None, None]
    >>> w.observe(0.05) is None, w.observe(0.05)[:21]
    (True, 'the last 2 calls took')
    """

    def __init__(
        self,
        *,
        policy: Policy = DEFAULT,
        factor: float | None = None,
        window: int | None = None,
        share: float | None = None,
        slow_share: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        changes = {"drift": factor, "window": window, "share": share, "slow_share": slow_share}
        changes = {k: v for k, v in changes.items() if v is not None}
        try:
            policy = policy.replace(**changes) if changes else policy
        except ValueError:
            raise ValueError(
                "Watch needs factor > 1, window >= 1, share > 0, slow_share >= 0"
            ) from None
        self.policy = policy
        self.factor, self.window, self.share = policy.drift, policy.window, policy.share
        self.slow_share, self.clock = policy.slow_share, clock
        self.calls = 0
        self.gaps: deque[float] = deque(maxlen=window)
        self._last_end: float | None = None
        self.start(None)

    def start(self, plan: Plan | None, from_calls: bool = False) -> None:
        """Watch ``plan`` from now on: its measured seconds are the baseline, if it has them,
        or (``from_calls``, after a re-check) the median of the next window of calls: a
        trial runs under ``no_grad``, and calls that train take longer for that alone."""
        self.baseline = plan.call_seconds if plan is not None and not from_calls else None
        # reused from the cache: the first window is checked against what the cache measured
        self.verify = (self.baseline is not None and plan is not None
                       and plan.decision(CACHE) is not None)  # fmt: skip
        self.probe = plan is not None and _load_dependent(plan)
        self.slow_probe = plan is not None and not self.probe and _threads_kept(plan)
        self.recent: deque[float] = deque(maxlen=self.window)
        self.watched = 0.0
        self.cost = self.policy.recheck_calls * self.baseline if self.baseline else None

    def spent(self, seconds: float) -> None:
        """A re-check took ``seconds``: the next one waits for its share."""
        self.cost = seconds

    @property
    def gap(self) -> float:
        """The median idle seconds between the last calls (0 below the policy's ``gap_min`` or
        before half a window of them, which the first drift can come before; at most
        ``gap_max``): what a re-check pauses before each run."""
        if len(self.gaps) < max(1, self.window // 2):
            return 0.0
        gap = statistics.median(self.gaps)
        return 0.0 if gap < self.policy.gap_min else min(gap, self.policy.gap_max)

    def observe(self, seconds: float, started: float | None = None) -> str | None:
        """Record one call (``seconds`` long; ``started`` on `clock`, for the idle time since
        the last call); why the decisions should be re-tried now, or None."""
        if started is not None:
            if self._last_end is not None:
                self.gaps.append(max(0.0, started - self._last_end))
            self._last_end = started + seconds
        self.calls += 1
        self.watched += seconds
        self.recent.append(seconds)
        if len(self.recent) < self.window:
            return None
        if self.verify:
            self.verify = False
            if why := self._from_cache(statistics.median(self.recent)):
                return why
        if self.cost is not None and self.watched * self.share < self.cost:
            return None  # before the median: this runs on every call
        now = statistics.median(self.recent)
        if self.baseline is None:
            self.baseline = now
        if self.cost is None:
            self.cost = self.policy.recheck_calls * self.baseline
        if self.watched * self.share < self.cost:
            return None
        ratio = now / self.baseline if self.baseline > 0 else 1.0
        if ratio > self.factor or ratio < 1 / self.factor:
            how = "slower" if ratio > 1 else "faster"
            times = ratio if ratio > 1 else 1 / ratio
            return (
                f"the last {self.window} calls took {format_seconds(now)} each, {times:.1f}x "
                f"{how} than the {format_seconds(self.baseline)} measured before (the load "
                "changed, or the idle time between calls)"
            )
        if self.probe:
            return (
                f"a periodic re-check of a load-dependent choice after "
                f"{format_seconds(self.watched)} of calls"
            )
        if self.slow_probe and self.watched * self.slow_share >= self.cost:
            return (
                f"a periodic re-check of the caller's {torch.get_num_threads()} intra-op threads "
                f"after {format_seconds(self.watched)} of calls"
            )
        return None


    def _from_cache(self, now: float) -> str | None:
        """Why a plan reused from the cache is re-checked now (its first window of calls ran
        ``cache_drift`` away from what the cache measured), or None."""
        assert self.baseline is not None
        ratio = now / self.baseline if self.baseline > 0 else 1.0
        if 1 / self.policy.cache_drift <= ratio <= self.policy.cache_drift:
            return None
        how, times = ("slower", ratio) if ratio > 1 else ("faster", 1 / ratio)
        return (
            f"reused from the cache, the first {self.window} calls took {format_seconds(now)} "
            f"each, {times:.2f}x {how} than the {format_seconds(self.baseline)} the cache "
            "measured: decided under another load"
        )


def _threads_kept(plan: Plan) -> bool:
    """The plan runs at the caller's threads, and there is more than one: one thread could
    win when the load changes, or have won in the moment after the trial."""
    return plan.measured and plan.thread_budget is None and torch.get_num_threads() > 1


def _load_dependent(plan: Plan) -> bool:
    """The plan kept a thread budget of its own or overlap: choices a load leaving can flip
    without its own calls getting slower."""
    return plan.thread_budget is not None or plan.parallel
