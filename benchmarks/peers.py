"""What a user would pick instead of graphexec: TorchScript fork/wait, ONNX Runtime, torch.compile.

Each builder returns ``(callable, setup_seconds)`` or raises; the suite records the error text
in the table instead of a number. Setup (scripting, export + session creation, compilation) is
timed separately from the runs.
"""

from __future__ import annotations

import copy
import io
import time
import types
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn as nn

__all__ = ["torchscript_fork", "onnx_export", "onnxruntime_session", "torch_compile",
           "own_frame"]  # fmt: skip

Fn = Callable[..., Any]


def torchscript_fork(fork_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[Fn, float]:
    """``torch.jit.script`` of the fork/wait twin (branches run on the inter-op pool)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch 2.13: still a peer
        scripted = torch.jit.script(fork_module)
        scripted = torch.jit.freeze(scripted.eval())
    scripted(*inputs)
    return scripted, time.perf_counter() - t0


def onnx_export(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[bytes, float]:
    """Export with the TorchScript-based exporter (the dynamo one needs ``onnxscript``)."""
    t0 = time.perf_counter()
    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, inputs, buf, dynamo=False, input_names=names, output_names=["out"]
        )
    return buf.getvalue(), time.perf_counter() - t0


def onnxruntime_session(model: bytes, parallel: bool, threads: int = 2) -> tuple[Fn, float]:
    """An ``InferenceSession`` in ORT's sequential or parallel execution mode.

    It returns the one output as a tensor, several (a model returning a tuple or dict,
    flattened by the exporter) as a tuple of tensors.
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    # Spinning pool threads would steal the cores from the contender timed next (interleaved).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(*xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
        if len(out) == 1:
            return torch.from_numpy(out[0])
        return tuple(torch.from_numpy(o) for o in out)  # the model's outputs, flattened

    return run, time.perf_counter() - t0


def torch_compile(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    grad_mode: Callable[[], AbstractContextManager] = torch.inference_mode,
    backend: Any = "inductor",
) -> tuple[Fn, float]:
    """``torch.compile`` (inductor, default mode, or ``backend``); setup time includes the
    first call.

    The first call runs under ``grad_mode``, the mode the runs will use: dynamo guards on it,
    so compiling under another mode would compile again on the first timed run.
    """
    t0 = time.perf_counter()
    compiled = torch.compile(module, backend=backend, dynamic=False)
    with grad_mode():
        compiled(*inputs)
    return compiled, time.perf_counter() - t0


def own_frame(module: nn.Module) -> nn.Module:
    """``module`` (same submodules, parameters and state) whose ``forward`` has a code object
    of its own, for one ``torch.compile`` contender.

    Dynamo keeps its compiled entries on the code object of the frame it compiles, so every
    ``torch.compile`` of one model class (one contender per backend) adds an entry to one
    list, and a call checks the guards of the entries before its own: a contender would pay
    for the others, by its position in the list. Each contender gets its own list, as a user
    who compiles a model once has.
    """
    cls = type(module)
    fwd = cls.forward
    own = types.FunctionType(fwd.__code__.replace(), fwd.__globals__, fwd.__name__,
                             fwd.__defaults__, fwd.__closure__)  # fmt: skip
    own.__kwdefaults__ = fwd.__kwdefaults__
    own.__dict__.update(fwd.__dict__)
    clone = copy.copy(module)  # shares __dict__'s contents: modules, parameters, buffers
    clone.__class__ = type(cls.__name__, (cls,), {"forward": own, "__module__": cls.__module__})
    return clone
