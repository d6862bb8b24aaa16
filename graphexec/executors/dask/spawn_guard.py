"""A script that starts an embedded Dask cluster without an ``if __name__ == "__main__":`` guard.

Dask starts worker processes with ``spawn``: each new process imports the script that started
it again, as ``__mp_main__``. Code at the top level of a script runs again in every worker,
and when that code starts a cluster, each worker tries to start processes of its own before
it has finished starting. Python refuses, every worker dies, and the user reads ~450 lines of
tracebacks from the workers and the nannies ending in ``Nanny failed to start``, with no word
of the one-line fix.

So, two checks, one on each side of the spawn:

* In a worker that is still starting (`bootstrapping`), creating a cluster ends the process
  at once with one line saying why (`refuse_in_bootstrap`), instead of a traceback.
* In the script's process, a cluster that fails to start while ``__main__`` is a script with
  no guard (`unguarded_script`) is reported as one `UnguardedMainError` that names the script
  and says what to write.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
from pathlib import Path

__all__ = [
    "UnguardedMainError",
    "bootstrapping",
    "explain",
    "refuse_in_bootstrap",
    "unguarded_script",
]

_GUARD = re.compile(r"""^\s*if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)


class UnguardedMainError(RuntimeError):
    """The embedded cluster could not start because the script re-runs in every worker."""


def bootstrapping() -> bool:
    """True in a process started by ``spawn`` while it still imports its parent's script."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def refuse_in_bootstrap() -> None:
    """End a starting worker process that is about to start a cluster of its own, in one
    line (its parent reports the cause, `unguarded_script`)."""
    if bootstrapping():
        raise SystemExit(
            "graphexec: this worker process re-ran the script that started the Dask cluster "
            "and tried to start another; put that code under if __name__ == '__main__':"
        )


def unguarded_script() -> str | None:
    """The path of ``__main__``'s script when it has no ``if __name__ == "__main__":``
    guard (its top level re-runs in spawned workers), else None.

    Examples
    --------
    >>> unguarded_script() is None  # under pytest, __main__ is pytest's own guarded script
    True
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not Path(path).is_file():
        return None  # an interactive session, python -c, a notebook: nothing re-imported
    try:
        source = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return None if _GUARD.search(source) else path


def explain(exc: BaseException) -> UnguardedMainError | None:
    """The error to raise instead of ``exc`` (a cluster that failed to start), when the
    script has no guard; else None."""
    script = unguarded_script()
    if script is None:
        return None
    return UnguardedMainError(
        f"the Dask cluster could not start its worker processes ({type(exc).__name__}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Dask starts "
        f"workers with 'spawn', which runs the top level of {script} again in each of them, "
        "and that starts a cluster again. Put the code that starts the cluster under\n"
        '    if __name__ == "__main__":\n(see https://docs.python.org/3/library/'
        "multiprocessing.html#the-spawn-and-forkserver-start-methods)"
    )
