"""GPU time of each node: CUDA events around every node, with the stream held back meanwhile.

What it decides
---------------
`graphexec.interpret.time_nodes` times nodes on the host. For GPU work that measures the
kernel *launches* (a few µs each, whatever the kernel does) and says nothing about how long
the kernels run, which is what overlapping them on streams can save. `time_nodes_cuda` measures
the kernels instead, with the same arguments and result, so that a planner can call one or the
other (`uses_cuda` says which applies):

* **Events.** One run in program order on the current stream, a timing event recorded before
  the first node and after each; a node's time is the GPU time between its two events.
* **Held queue.** Before the run, a spinning kernel (``torch.cuda._sleep``) holds the stream
  while the host enqueues every node and event; the GPU then runs them back to back, so the
  time between two events is the node's kernels, not the host's launch gaps. The spin is sized
  from the host's enqueue time of the warm-up run (with a margin). If the spin ended before the
  host finished enqueueing (the hold failed: a node synchronized, the launch queue filled, or
  the host was slow), the run is repeated with a spin twice as long, up to the policy's
  ``hold_tries`` times;
  after that the samples are kept as measured (they then include launch gaps) and
  `TimesCuda.held` says so.
* **Host nodes.** A node that computes on the CPU launches nothing: its GPU time is ~0. Mixed
  graphs need host times for those nodes (the caller's choice).

One synchronization per run, none per node.

    time_nodes_cuda(graph, names, example_inputs, repeats)
      -> a warm-up run, then a host-timed one (sizes the spin)
      -> per repeat: _held_run   spin, events, nodes; query; sync; elapsed times
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .graph import Graph, state_tensors
from .interpret import bind_inputs, check_none, run_nodes
from .policy import DEFAULT, Policy

__all__ = ["time_nodes_cuda", "uses_cuda", "TimesCuda"]


class TimesCuda(dict):
    """Seconds of GPU time per node (a ``dict`` of lists, as `time_nodes` returns).

    ``held``: how many of the timed runs had the queue held for their whole enqueue (so their
    samples are kernel time alone); ``runs``: how many timed runs there were.
    """

    held: int = 0
    runs: int = 0


def uses_cuda(graph: Graph, example_inputs: Iterable[Any] = ()) -> bool:
    """Whether a graph runs on a GPU: a CUDA example input, or a CUDA parameter or buffer.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("g")
    >>> g.output(g.node("a", nn.Linear(2, 2), g.input("x")))
    >>> uses_cuda(g, (torch.ones(1, 2),))
    False
    """
    if any(isinstance(v, torch.Tensor) and v.is_cuda for v in example_inputs):
        return True
    return any(t.is_cuda for node in graph for t in state_tensors(node.fn))


def time_nodes_cuda(
    graph: Graph,
    names: Sequence[str],
    example_inputs: Sequence[Any],
    repeats: int,
    threads: int | None = None,
    policy: Policy = DEFAULT,
    keep: Callable[[Mapping[str, Any]], None] | None = None,
) -> TimesCuda:
    """GPU seconds of each node over ``repeats`` held ``no_grad`` runs, after a warm-up run.

    Same arguments and result as `graphexec.interpret.time_nodes` (``threads`` is accepted
    and ignored: kernels do not use the host's intra-op threads). Each run is tried up to
    ``policy.hold_tries`` times behind a spin of ``policy.hold_margin`` times the host's
    enqueue time, doubled at each try. ``keep`` is called with every value of the warm-up
    run (`graphexec.tuning.Sample`).

    Raises
    ------
    RuntimeError
        If torch sees no CUDA device.
    NodeError
        Naming the node, if one raises (in the warm-up run).
    """
    del threads
    if not torch.cuda.is_available():
        raise RuntimeError(
            "time_nodes_cuda needs a CUDA device; time CPU graphs with "
            "graphexec.interpret.time_nodes"
        )
    samples = TimesCuda({n: [] for n in names})
    with torch.no_grad():
        env = bind_inputs(graph, example_inputs, {})  # warm-up: lazy handles, autotuning
        run_nodes(graph.nodes, names, env, protect=True, strict=True)
        check_none(graph.nodes, None, env, graph.output_refs())
        if keep is not None:
            keep(env)
        env = bind_inputs(graph, example_inputs, {})
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_nodes(graph.nodes, names, env, protect=True)
        host_s = time.perf_counter() - t0  # enqueue plus any host-side work of the nodes
        del env
        torch.cuda.synchronize()
        rate = _spin_rate()
        for _ in range(repeats):
            for _ in range(policy.hold_tries):
                times, held, host_s = _held_run(graph, names, example_inputs, host_s, rate,
                                                policy.hold_margin)  # fmt: skip
                if held:
                    break
            samples.held += held
            samples.runs += 1
            for n, s in zip(names, times, strict=True):
                samples[n].append(s)
    return samples


def _held_run(
    graph: Graph, names: Sequence[str], example_inputs: Sequence[Any], host_s: float, rate: float,
    margin: float,
) -> tuple[list[float], bool, float]:  # fmt: skip
    """One run behind a spin of ``margin * host_s``: (seconds per node, held, the spin's
    length for the next try: doubled when the hold failed)."""
    stream = torch.cuda.current_stream()
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)]
    env = bind_inputs(graph, example_inputs, {})
    spin = margin * host_s
    torch.cuda._sleep(max(1, int(spin * rate)))
    marks[0].record(stream)
    for name, mark in zip(names, marks[1:], strict=True):
        run_nodes(graph.nodes, (name,), env, protect=True)
        mark.record(stream)
    held = not marks[0].query()  # the spin still runs: nothing was launched late
    marks[-1].synchronize()
    times = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:], strict=False)]
    return times, held, host_s if held else 2 * host_s


def _spin_rate() -> float:
    """``torch.cuda._sleep`` cycles per second on this device (measured once per call)."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 1_000_000
    begin.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / max(begin.elapsed_time(end) / 1e3, 1e-9)
