"""Run a command with one core kept busy: CI's check that the tests which decide from what they
measure pass on a busy machine too (issue 34: a real trial there picked one intra-op thread
and a test expecting the caller's threads failed).

    python .ci/busy_core.py COMMAND [ARG ...]

A child process spins a pure-Python loop (one core's worth of load) from before the command
starts until it ends; the exit status is the command's. The loop is stopped on every path:

* killed by its PID once the command ends, fails, or cannot start;
* the same when this script gets SIGTERM, SIGINT or SIGHUP (raised as `SystemExit`, so the
  ``finally`` runs; the command is stopped first);
* should this script die without running its ``finally`` (SIGKILL), the loop sees that its
  parent is gone and ends by itself.

The last line says how much CPU the loop used while the command ran, so a log shows that the
core really was busy. Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: The busy loop: spins, and every few million steps checks that its parent is still there.
LOOP = (
    "import os\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(2_000_000):\n"
    "        pass\n"
)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ``finally`` below


def _cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds of a running process (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _end(proc: subprocess.Popen, how: int) -> None:
    """Stop ``proc`` by its PID with ``how`` unless it has ended (SIGKILL if it is still
    running 30 s later), and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, how)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    loop = subprocess.Popen([sys.executable, "-c", LOOP], stdin=subprocess.DEVNULL)
    command = None
    start = time.monotonic()
    try:
        time.sleep(0.3)  # the loop is spinning before the command starts
        if loop.poll() is not None:
            raise RuntimeError(f"the busy loop (PID {loop.pid}) exited with {loop.returncode}")
        print(f"busy_core: a busy loop (PID {loop.pid}) keeps one core busy; running: "
              f"{' '.join(argv)}", flush=True)  # fmt: skip
        command = subprocess.Popen(argv)
        status = command.wait()
        used = _cpu_seconds(loop.pid)
        if loop.poll() is not None:
            raise RuntimeError(f"the busy loop (PID {loop.pid}) ended before the command")
        spent = time.monotonic() - start
        cpu = f", using {used:.1f} s of CPU" if used is not None else ""
        print(f"busy_core: the loop ran beside the command for {spent:.1f} s{cpu}; "
              f"the command exited with {status}", flush=True)  # fmt: skip
        return status
    finally:
        try:
            if command is not None:
                _end(command, signal.SIGTERM)
        finally:
            _end(loop, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
