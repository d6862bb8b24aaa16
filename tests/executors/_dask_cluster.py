"""A real Dask cluster as separate processes: ``dask scheduler`` and ``dask worker`` on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import distributed


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_cli() -> list[str]:
    return [sys.executable, "-m", "dask"]  # not a shell shim: the pid is the Dask process


@dataclass
class ProcessCluster:
    """Addresses and processes of a scheduler and its workers started by `process_cluster`."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextmanager
def process_cluster(n_workers: int = 2, timeout: float = 60) -> Iterator[ProcessCluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker --no-nanny`` processes.

    Workers run without a nanny, so a worker's pid is the process doing the work (a test can
    SIGKILL it). Everything is killed on exit.
    """
    # Port 0 and a scheduler file: no port is picked here and raced for by others.
    scheduler_file = Path(tempfile.mkdtemp(prefix="gx-dask-")) / "scheduler.json"
    # Workers unpickle functions by module name: let them import the test modules next to this.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    scheduler = subprocess.Popen(
        [*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", str(scheduler_file)],
        **quiet,
    )
    workers: list[subprocess.Popen] = []
    try:
        address = _address_from(scheduler_file, scheduler, timeout)
        for _ in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [*_dask_cli(), "worker", address, "--nthreads", "1", "--no-nanny"]
                    + ["--no-dashboard", "--host", "127.0.0.1"],
                    **quiet,
                )
            )
        with distributed.Client(address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield ProcessCluster(address, scheduler, workers)
    finally:
        for p in [*workers, scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(scheduler_file.parent, ignore_errors=True)


def _address_from(scheduler_file: Path, scheduler: subprocess.Popen, timeout: float) -> str:
    """The scheduler's address, once it has written its scheduler file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dask scheduler did not start") from None
            time.sleep(0.05)
