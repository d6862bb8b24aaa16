"""Capture a stream program into CUDA graphs, one per input signature, and replay them.

What it decides
---------------
``CudaStreamExecutor(capture=True)`` hands each inference call here, under its lock, instead
of enqueueing the program itself. Everything here needs a device but the key and the checks.

* **Key.** One ``torch.cuda.CUDAGraph`` per (plan, input shapes/dtypes/devices, modes), as
  `capture_key` says. A graph bakes non-tensor inputs in, so their values are part of the key
  (they must be hashable). A new input signature for a plan already captured captures again
  and warns (`CaptureWarning`); every graph is kept until the executor is closed.
* **Refusals.** Before capturing, inputs on another device and nodes that write a graph input
  in place (directly, or through an in-place result) are refused: the graph would read or
  write its static copy, not the caller's tensor.
* **Capture.** The inputs are cloned into static buffers. Warm-up runs go on the capture
  stream first (lazy library handles, workspaces and autotuning must happen outside a
  capture); then the whole multi-stream program is recorded, its side streams forking from
  and joining into the capture stream through the same events as a run without capture.
* **Replay.** Each call copies its inputs into the static buffers, replays, and clones the
  outputs out (the next replay overwrites the static ones). The caller's stream first waits
  for the end of the previous replay, which may have been enqueued on another stream and
  still read the buffers.
* **Grad.** Calls with grad enabled run without the graph (a replayed graph records no
  autograd graph); the executor says so once.

The call tree::

    CudaStreamExecutor._replay(plan, program, env)    under the executor's lock
      -> captured_for(graphs, plan, env, make)        look up capture_key; make() on a miss
           -> CudaStreamExecutor._capture -> capture  check, warm up, record
      -> replay(cap, env, device)                     copy inputs in, replay, clone out
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ...graph import Graph
from ...plans import Plan
from ..base import Modes, capture_modes

__all__ = [
    "CaptureWarning",
    "Captured",
    "capture",
    "capture_key",
    "captured_for",
    "check_capturable",
    "replay",
]


class CaptureWarning(UserWarning):
    """A CUDA graph was captured again (new input signature) or could not be used."""


@dataclass
class Captured:
    """One captured CUDA graph: its static input buffers and the static outputs it writes."""

    plan: Plan  # kept alive so that id(plan) in the cache key stays unique
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, Any]
    done: Any  # torch.cuda.Event recorded after each replay


def capture_key(plan: Plan, env: Mapping[str, Any], modes: Modes) -> tuple:
    """What a captured CUDA graph is specialised to: the plan, the modes, each input's
    shape, dtype and device (tensors) or value (anything else, which must be hashable).

    Raises
    ------
    TypeError
        If a graph input is neither a tensor nor hashable.

    Examples
    --------
    >>> import torch, graphexec as gx
    >>> g = gx.Graph("g")
    >>> g.output(g.node("neg", torch.neg, g.input("x")))
    >>> p, modes = gx.plan(g), capture_modes()
    >>> key = capture_key(p, {"x": torch.ones(2, 3)}, modes)
    >>> key[2]
    (('x', (2, 3), torch.float32, device(type='cpu')),)
    >>> key == capture_key(p, {"x": torch.zeros(2, 3)}, modes)
    True
    """
    sig = []
    for name in plan.graph.inputs:
        v = env[name]
        if isinstance(v, torch.Tensor):
            sig.append((name, tuple(v.shape), v.dtype, v.device))
            continue
        try:
            hash(v)
        except TypeError as exc:
            raise TypeError(
                f"capture=True: graph input '{name}' is a {type(v).__name__}; a CUDA graph bakes "
                "non-tensor inputs in, so they must be hashable (or use capture=False)"
            ) from exc
        sig.append((name, v))
    return (id(plan), modes, tuple(sig))


def captured_for(
    graphs: dict[tuple, Captured],
    plan: Plan,
    env: Mapping[str, Any],
    make: Callable[[], Captured],
) -> Captured:
    """The graph captured for this call's signature; ``make()`` captures one on a miss.

    Mutates ``graphs`` (the executor's cache): the caller holds the executor's lock.
    """
    key = capture_key(plan, env, capture_modes())
    cap = graphs.get(key)
    if cap is None:
        if any(k[0] == key[0] for k in graphs):
            warnings.warn(
                f"graph '{plan.graph.name}': new input signature {key[2]}; capturing "
                f"another CUDA graph ({len(graphs) + 1} kept)",
                CaptureWarning,
                stacklevel=5,  # captured_for <- _replay <- _execute <- Executor.run <- caller
            )
        cap = graphs[key] = make()
    return cap


def capture(
    plan: Plan,
    env: Mapping[str, Any],
    device: torch.device,
    stream: Any,
    warmup: int,
    run: Callable[[dict[str, Any]], None],
) -> Captured:
    """Warm up and record ``run`` (the program on streams forking from ``stream``) as a graph.

    ``run(env)`` enqueues the whole program on the current stream, filling ``env``.

    Raises
    ------
    ValueError
        If an input is not on ``device``, or a node writes a graph input in place.
    """
    check_capturable(plan, env, device)
    static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            run(dict(static))
    graph = torch.cuda.CUDAGraph()
    run_env = dict(static)
    with torch.cuda.graph(graph, stream=stream):  # synchronizes the device first
        run(run_env)
    outputs = {v: run_env[v] for v in _output_values(plan) if v in plan.task_of}
    inputs = {k: v for k, v in static.items() if isinstance(v, torch.Tensor)}
    return Captured(plan, graph, inputs, outputs, torch.cuda.Event())


def replay(cap: Captured, env: dict[str, Any], device: torch.device) -> None:
    """Copy ``env``'s inputs into the static buffers, replay, and put clones of the outputs
    into ``env``; all enqueued on the current stream of ``device``."""
    caller = torch.cuda.current_stream(device)
    caller.wait_event(cap.done)  # a replay enqueued on another stream may still read them
    for name, buffer in cap.inputs.items():
        buffer.copy_(env[name])
    cap.graph.replay()
    for name, value in cap.outputs.items():  # the next replay overwrites the static ones
        env[name] = pytree.tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value
        )
    cap.done.record(caller)


def _output_values(plan: Plan) -> list[str]:
    return list(dict.fromkeys(r.node for r in plan.graph.output_refs()))


def check_capturable(plan: Plan, env: Mapping[str, Any], device: torch.device) -> None:
    for name in plan.graph.inputs:
        v = env[name]
        if isinstance(v, torch.Tensor) and v.device != device:
            raise ValueError(
                f"capture=True: graph input '{name}' is on {v.device}, not {device}; a CUDA graph "
                "only replays GPU work (move the input, or use capture=False)"
            )
    inputs = set(plan.graph.inputs)
    for node in plan.graph:
        for i in node.mutates:
            root = _input_root(plan.graph, node.inputs[i].node, inputs)
            if root is not None:
                raise ValueError(
                    f"capture=True: node '{node.name}' writes graph input '{root}' in place; a "
                    "CUDA graph would write its static copy instead (use capture=False)"
                )


def _input_root(graph: Graph, name: str, inputs: set[str]) -> str | None:
    """The graph input a value is, or aliases through in-place results; None if none."""
    while name not in inputs:
        node = graph.nodes[name]
        if not node.mutates:
            return None
        name = node.inputs[node.mutates[0]].node
    return name
