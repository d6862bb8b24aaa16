"""What a step of ``gx.plan`` sees: one `Context`, holding the `Sample` of one run.

What it decides
---------------
* **One signature.** Every measured decision of ``gx.plan`` is a step
  ``step(plan, context) -> plan`` (`graphexec.steps.STEPS` lists them, in order, as
  ``torch.fx``'s pass manager lists passes): it reads what it needs from the context, tries
  what it decides side by side, and returns the plan with its decision recorded. A step that
  has nothing to decide returns the plan as it is.
* **One run of the example inputs.** The node timing's warm-up run (`graphexec.interpret`,
  whichever clock times the nodes) also fills a `Sample`: the shape and dtype of every value a
  node reads, the graph's outputs, and the values fusion candidates read. Later steps use it
  instead of running the whole graph again: horizontal fusion reads its shapes and its
  groups' inputs from it, and the module as it is is compared with its outputs.
* **The blackboard.** Besides the sample, the context carries what one step leaves for a later
  one: the node times at one thread (re-measured once fusion changes the graph), the plan as
  first arranged (what compiled tasks are tried against), and why the exported graph is not
  worth a trial (``hopeless``). Steps run in one thread, one after another; nothing here is
  shared across threads.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .executors.base import BudgetLanes, collect_outputs
from .gputime import time_nodes_cuda, uses_cuda
from .graph import Graph, Ref
from .interpret import compute_order, time_nodes, time_nodes_beside
from .plans import Plan
from .policy import DEFAULT, Policy

__all__ = ["Context", "Options", "Progress", "Sample", "node_costs"]


@dataclass
class Sample:
    """What one run of the example inputs showed: ``shapes`` (every value a node reads: its
    shape and dtype, None for a non-tensor), ``outputs`` (the graph's outputs, when
    ``has_outputs``) and ``values`` (node name -> value, for the names asked for; a step
    releases them when done).

    The timing runs clone what a node writes in place before it writes it (so repeated runs
    leave the example inputs as they were), and then a reader of the written tensor sees it
    unwritten: the outputs of a graph that writes in place are not kept (``has_outputs`` is
    False), and the steps that compare with them run the plan instead."""

    shapes: dict[Ref, tuple[tuple[int, ...], torch.dtype] | None] = field(default_factory=dict)
    outputs: Any = None
    values: dict[str, Any] = field(default_factory=dict)
    taken: bool = False
    has_outputs: bool = False

    def keeper(self, graph: Graph, wanted: Iterable[str]) -> Callable[[Mapping[str, Any]], None]:
        """A callback for the node timing's first run: fills this sample from its values."""
        wanted = set(wanted)

        def keep(env: Mapping[str, Any]) -> None:
            self.shapes = value_shapes(graph, env)
            self.has_outputs = not any(node.mutates for node in graph)
            self.outputs = collect_outputs(graph, env) if self.has_outputs else None
            self.values = {n: env[n] for n in wanted if n in env}
            self.taken = True

        return keep


def value_shapes(graph: Graph, env: Mapping[str, Any]
                 ) -> dict[Ref, tuple[tuple[int, ...], torch.dtype] | None]:  # fmt: skip
    """Shape and dtype of every value a node of ``graph`` reads, from one run's ``env``."""
    out: dict[Ref, Any] = {}
    for node in graph:
        for r in node.inputs:
            v = r.resolve(env[r.node])
            out[r] = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else None
    return out


@dataclass(frozen=True)
class Options:
    """``gx.plan``'s options (see its docstring), the policy among them."""

    inline_below: float
    fuse_chains: bool
    repeats: int
    hfuse: bool | str
    backend: str
    check: bool
    source_margin: float
    data_parallel: bool | int | str = False
    batch_axis: int | Mapping[str, int | None] = 0
    policy: Policy = DEFAULT

    @property
    def arranging(self) -> dict[str, Any]:
        return {"inline_below": self.inline_below, "fuse_chains": self.fuse_chains}


class Progress:
    """Says on the ``graphexec`` logger what planning measures once it has taken more than
    ``slow`` seconds (the policy's ``slow_planning``; silence it with
    ``logging.getLogger("graphexec")``)."""

    def __init__(self, name: str, slow: float):
        self.name, self.start, self.slow = name, time.perf_counter(), slow

    def step(self, what: str) -> None:
        spent = time.perf_counter() - self.start
        if spent > self.slow:
            logging.getLogger("graphexec").warning(
                "graphexec: planning graph '%s' (%.1f s so far): measuring %s; the decisions "
                "are cached for the next process (GRAPHEXEC_CACHE_DIR)", self.name, spent, what)


@dataclass
class Context:
    """What every step of ``gx.plan`` sees (module docstring): the graph as given, the
    example inputs, the options and their policy, the sample of one run, and the blackboard
    steps leave for later ones."""

    graph: Graph
    inputs: tuple[Any, ...]
    opts: Options
    progress: Progress
    sample: Sample
    #: Node seconds at one intra-op thread, for the nodes of the plan's graph now.
    costs_1: dict[str, float]
    #: The plan as first arranged from the node times: what compiled tasks are tried against.
    arranged: Plan
    #: Whether the node times leave one intra-op thread worth a trial.
    try_one: bool = False
    #: Why no way of running an exported graph is worth a trial against its module, or None.
    hopeless: str | None = None

    @property
    def policy(self) -> Policy:
        return self.opts.policy


def _median(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(s) for n, s in samples.items()}


def node_costs(
    graph: Graph, inputs: Sequence[Any], repeats: int, policy: Policy = DEFAULT,
    keep: Callable[[Mapping[str, Any]], None] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Each node's median seconds at the caller's intra-op threads and at one thread (on a
    budget, interleaved run by run: the caller's count is put back after each); ``keep`` is
    given every value of the first run (`graphexec.tuning.Sample`)."""
    names = compute_order(graph)
    if uses_cuda(graph, inputs):  # kernel time from CUDA events: host clocks see launches
        costs = _median(time_nodes_cuda(graph, names, inputs, repeats, policy=policy, keep=keep))
        return costs, costs
    if torch.get_num_threads() == 1:
        costs = _median(time_nodes(graph, names, inputs, repeats, keep=keep))
        return costs, costs
    lane = BudgetLanes()
    try:
        here, there = time_nodes_beside(graph, names, inputs, repeats,
                                        lambda fn: lane.call(1, fn), policy.drop,
                                        keep)  # fmt: skip
    finally:
        lane.close()
    return _median(here), _median(there)
