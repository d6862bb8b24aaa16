"""Run a plan on CUDA streams (`CudaStreamExecutor`); what each module decides is in its
docstring. Each imports only modules listed below it::

    executor      CudaStreamExecutor, run_program (enqueue a stream program), auto_choice
    capture       one CUDA graph per input signature: key, checks, warm-up, replay
    streams       stream_program: which stream runs each task, which events order them
    stream_check  the checker of a stream program (CPU only): every dependency ordered, no
                  wait too many, values marked for the streams that read them

Nothing here needs a GPU to import; `CudaStreamExecutor` raises `CudaUnavailableError` where
torch sees none.
"""

from __future__ import annotations

from .capture import CaptureWarning, capture_key
from .executor import CudaStreamExecutor, CudaUnavailableError, auto_choice, run_program
from .streams import INPUTS, StreamOp, StreamProgram, stream_program

__all__ = [
    "CudaStreamExecutor",
    "CudaUnavailableError",
    "CaptureWarning",
    "StreamOp",
    "StreamProgram",
    "stream_program",
    "run_program",
    "auto_choice",
    "capture_key",
    "INPUTS",
]
