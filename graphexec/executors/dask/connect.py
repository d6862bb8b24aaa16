"""How the `DaskExecutor` gets its cluster: an embedded ``LocalCluster``, or a scheduler to join.

What it decides
---------------
* **Reaching a scheduler is bounded by the executor's ``timeout``, whatever Dask does.** Before
  a ``distributed.Client`` is made for a ``tcp://`` address, `probe` opens a socket and waits
  for the scheduler's handshake (a Dask server writes first: an 8-byte frame length). Nothing
  listening, a port that accepts and never answers (Dask's own client hangs there), or one
  that answers with something other than Dask (an HTTP server; Dask reads its reply as a frame
  length and tries to allocate exabytes) all raise `SchedulerUnreachableError` naming the
  address within ``timeout``.
* **TLS is checked before anything starts** (`check_tls`). A ``tls://`` address, or an
  embedded cluster asked to encrypt (``security.require_encryption``), without the certificates
  each side needs (the client's; for an embedded cluster the scheduler's and the workers' too)
  raises a `TLSConfigError` naming the address and the missing roles. Dask raised a bare
  ``TypeError`` naming neither, after building a ``Client`` it could not close (a stall and a
  traceback at exit; retrying deadlocked on the third try).
* **No fixed ports.** The embedded cluster's scheduler listens on a free port. Its dashboard
  asks for ``dashboard_address`` (default ``:8787``) and takes a free port, without a warning,
  when that one is taken; ``dashboard_address=None`` turns the dashboard off and puts the
  scheduler's HTTP server on a free port too, not on 8787, serving no page at all (Dask
  would still serve its info pages, worker logs, health and metrics there).
* **Nothing beyond loopback.** Every socket of the embedded cluster listens on 127.0.0.1: the
  scheduler, nannies and workers (Dask's own choice for a ``LocalCluster`` of processes), and
  the HTTP servers, which Dask puts on every interface (``0.0.0.0``): the scheduler's when the
  dashboard address names no host, as ``:8787`` does, and when the dashboard is off; each
  worker's when the workers are threads (``processes=False``). Here an
  address without a host means loopback (`_loopback`); a user who wants the dashboard seen
  from elsewhere names the host (``"0.0.0.0:8787"``).
* **Workers that die come back.** `EmbeddedCluster` is a ``LocalCluster`` whose nannies restart
  their worker however often it dies. (Dask's own closes a nanny for good when its worker is
  not back within ``distributed.deploy.lost-worker-timeout`` of being lost, so a worker that
  dies twice in quick succession left the cluster one worker short for the rest of its life.)
* **Workers do not profile themselves.** `EMBEDDED_CONFIG` turns Dask's statistical profiler
  off in the embedded cluster's workers (the dashboard's profile page stays empty): it
  sampled every thread every 10 ms, doubling an idle worker's CPU. A joined cluster is the
  user's and keeps its settings.
* **A private scratch folder.** Dask's workers and scheduler keep files (spilled data,
  uploaded modules) under ``$TMPDIR/dask-scratch-space``, one folder shared by every user and
  run on the machine (mode 0755). The embedded cluster gets a folder of its own, made by
  ``tempfile.mkdtemp`` (mode 0700), and removes it when it closes.
* **Errors only in the log.** The embedded cluster's scheduler, nannies and workers log
  errors, not Dask's warnings (``silence_logs=logging.ERROR``; Dask's default shows warnings):
  a Ctrl-C printed some 25 lines of shutdown warnings around the one traceback that matters.
  `quiet_interrupts` also drops asyncio's "Task exception was never retrieved" for Dask's
  internal ``AllExit`` (a gather interrupted by Ctrl-C leaves one behind).
* **A script without a ``__main__`` guard** gets one clear error (`spawn_guard`), not a page
  of worker tracebacks, when its embedded cluster cannot start (`start_cluster`).
* **Close what was created.** `close_owned` closes the client and cluster this executor made,
  never a client it was given; `connect` closes the embedded cluster when no client reaches it.
"""

from __future__ import annotations

import logging
import shutil
import socket
import struct
import tempfile
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

import dask
import distributed
from distributed.deploy.cluster import Cluster

from . import spawn_guard

__all__ = [
    "EMBEDDED_CONFIG",
    "EmbeddedCluster",
    "SchedulerUnreachableError",
    "TLSConfigError",
    "check_tls",
    "close_owned",
    "connect",
    "quiet_interrupts",
    "probe",
    "start_cluster",
]

#: Dask settings of the embedded cluster, read when its scheduler and nannies start (a nanny
#: hands them to every worker it starts, restarts included). Dask's statistical profiler
#: samples every thread of a worker every 10 ms for the dashboard's profile page: with it an
#: idle worker used 4.5% of a core, without it 2.3% (2-core VM), CPU that `map` wants.
EMBEDDED_CONFIG = {"distributed.worker.profile.enabled": False}

#: Where the embedded cluster listens.
LOOPBACK = "127.0.0.1"

#: A Dask handshake's first frame is a few hundred bytes; anything bigger is not Dask.
_MAX_HANDSHAKE = 1 << 20


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler could not be reached within the timeout (the message names it)."""


def unreachable(address: str, why: str) -> SchedulerUnreachableError:
    """The error for a scheduler that cannot be reached, with the cause as soon as known."""
    return SchedulerUnreachableError(
        f"DaskExecutor: cannot reach the Dask scheduler at {address}: {why}"
    )


def os_reason(exc: OSError) -> str:
    """What an ``OSError`` of a connect means, said as soon as it is known."""
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    return f"{type(exc).__name__}: {exc}"


def probe(address: str, timeout: float) -> None:
    """Check within ``timeout`` that a Dask server answers at a ``tcp://`` address.

    Raises
    ------
    SchedulerUnreachableError
        If nothing listens there, nothing answers, or what answers is not Dask.
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or parts.port is None:
        return  # tls://, inproc://, ...: left to Dask (and its timeout)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            head = _read(sock, 8, deadline)
    except TimeoutError:
        why = f"no answer within {timeout:g} s (it accepts connections but never answers)"
        raise unreachable(address, why) from None
    except OSError as exc:
        raise unreachable(address, os_reason(exc)) from exc
    (length,) = struct.unpack("<Q", head)
    if not 0 < length <= _MAX_HANDSHAKE:
        raise unreachable(address, f"something answers there but not Dask: it sent {head!r}")


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the connection was closed without a Dask handshake")
        data += chunk
    return data


class TLSConfigError(ValueError):
    """TLS was asked for without the certificates it needs (the message names what is missing)."""


#: The roles whose certificates an embedded cluster needs, and the ``Security`` fields.
_ROLES = {"client": "tls_client", "scheduler": "tls_scheduler", "worker": "tls_worker"}


def check_tls(address: str | None, security: Any, embedded: bool) -> None:
    """Raise `TLSConfigError` when TLS is asked for without the certificates it needs.

    ``address`` is the scheduler to join (None for an embedded cluster); ``security`` the
    ``distributed.Security`` given (None: Dask's configuration).
    """
    sec = security if security is not None else distributed.Security()
    if embedded:
        if not sec.require_encryption:
            return  # Dask's LocalCluster uses tcp:// then
        roles, where = tuple(_ROLES), "the embedded cluster (security.require_encryption=True)"
    elif str(address).startswith("tls://"):
        roles, where = ("client",), str(address)
    else:
        return
    missing = [r for r in roles if not _has_context(sec, r)]
    if not missing:
        return
    fields = ", ".join(f"{_ROLES[r]}_cert=..., {_ROLES[r]}_key=..." for r in missing)
    hint = " (one certificate may serve every role)" if embedded else ""
    raise TLSConfigError(
        f"DaskExecutor: {where} needs TLS, and security= has no certificate for the "
        f"{', '.join(missing)}: pass security=distributed.Security(tls_ca_file=..., {fields}"
        f"){hint}" + ("" if embedded else ", or a tcp:// address")
    )


def _has_context(sec: Any, role: str) -> bool:
    try:
        get = sec.get_connection_args if role == "client" else sec.get_listen_args
        args = get(role)
    except OSError as exc:  # a certificate file that cannot be read
        raise TLSConfigError(f"DaskExecutor: cannot read the {role}'s TLS files: {exc}") from exc
    return args.get("ssl_context") is not None


class EmbeddedCluster(distributed.LocalCluster):
    """A ``LocalCluster`` that never gives up on a nanny and removes its scratch folder on
    close (see the module docstring)."""

    scratch: str | None = None  # this cluster's private temporary folder

    def close(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().close(*args, **kwargs)
        finally:
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def _update_worker_status(self, op: str, msg: Any) -> None:
        Cluster._update_worker_status(self, op, msg)  # skip SpecCluster's lost-worker close


def start_cluster(
    n_workers: int,
    threads_per_worker: int,
    processes: bool,
    security: Any,
    dashboard_address: str | None,
) -> EmbeddedCluster:
    """Start the embedded cluster on free ports (see the module docstring).

    Raises
    ------
    spawn_guard.UnguardedMainError
        If worker processes could not start because the script that starts the cluster has
        no ``if __name__ == "__main__":`` guard (it re-runs in every spawned worker).
    """
    if processes:
        spawn_guard.refuse_in_bootstrap()
    try:
        return _start(n_workers, threads_per_worker, processes, security, dashboard_address)
    except Exception as exc:
        better = spawn_guard.explain(exc) if processes else None
        if better is None:
            raise
        raise better from None


def _start(
    n_workers: int,
    threads_per_worker: int,
    processes: bool,
    security: Any,
    dashboard_address: str | None,
) -> EmbeddedCluster:
    kwargs: dict[str, Any] = {}
    config = dict(EMBEDDED_CONFIG)
    if dashboard_address is None:  # Dask would still serve pages, on 0.0.0.0:8787
        kwargs["scheduler_kwargs"] = {"dashboard_address": f"{LOOPBACK}:0", "dashboard": False}
        config["distributed.scheduler.http.routes"] = []  # no page at all: nothing to link to
    else:
        dashboard_address = _port_or_any(_loopback(dashboard_address))
    if not processes:  # in-process workers put their HTTP server on 0.0.0.0 otherwise
        kwargs["worker_dashboard_address"] = f"{LOOPBACK}:0"
    scratch = tempfile.mkdtemp(prefix="graphexec-dask-")  # mode 0700: this user's only
    config["temporary-directory"] = scratch  # read by the scheduler, the nannies, the workers
    try:
        with warnings.catch_warnings(), dask.config.set(config):
            # should the port be taken between the check and Dask
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
            cluster = EmbeddedCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=processes,
                security=security,
                dashboard_address=dashboard_address,
                scheduler_port=0,
                silence_logs=logging.ERROR,
                **kwargs,
            )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    cluster.scratch = scratch
    return cluster


def connect(address: str, cluster: Any, security: Any, timeout: float) -> distributed.Client:
    """A client of the embedded ``cluster``, or else of the scheduler at ``address`` (probed
    first); an embedded cluster is closed when its client cannot be made.

    Raises
    ------
    SchedulerUnreachableError
        If the scheduler cannot be reached within ``timeout`` (naming the address).
    """
    try:
        if cluster is None:
            probe(address, timeout)
        return distributed.Client(
            cluster if cluster is not None else address,
            timeout=timeout,
            security=security,
            set_as_default=False,
        )
    except (OSError, SchedulerUnreachableError) as exc:
        if cluster is not None:
            cluster.close()
        if isinstance(exc, SchedulerUnreachableError):
            raise
        why = os_reason(exc)
        if isinstance(exc, TimeoutError) or "Timed out" in str(exc):
            why = f"no answer within {timeout:g} s ({type(exc).__name__}: {exc})"
        raise unreachable(address, why) from exc


def _loopback(address: str) -> str:
    """``address`` with loopback as its host when it names none (``":8787"``, ``"8787"``).

    Examples
    --------
    >>> _loopback(":8787"), _loopback("8787"), _loopback("0.0.0.0:8787")
    ('127.0.0.1:8787', '127.0.0.1:8787', '0.0.0.0:8787')
    """
    host, _, port = address.rpartition(":")
    return f"{host or LOOPBACK}:{port}"


def _port_or_any(address: str) -> str:
    """``address``, or the same host on a free port when its port is taken.

    Dask falls back to a free port by itself, but with a warning, and tornado leaks the socket
    that failed to bind (a ResourceWarning): both errors under ``-W error``.
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return address
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return f"{host}:0"
    return address


def quiet_interrupts() -> None:
    """Drop asyncio's report of Dask's ``AllExit`` left in a gather that Ctrl-C interrupted
    (once per process; nothing else is filtered)."""
    asyncio_log = logging.getLogger("asyncio")
    if _not_all_exit not in asyncio_log.filters:
        asyncio_log.addFilter(_not_all_exit)


def _not_all_exit(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return type(exc).__name__ != "AllExit" or type(exc).__module__ != "distributed.client"


def close_owned(client: distributed.Client | None, cluster: Any) -> None:
    """Close what the executor created (a finalizer: also on errors and at exit)."""
    try:
        if client is not None:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
