"""``serve --workers N``: N server processes on one port, under one supervisor.

Each worker is a whole server (its own event loop, actors and listening socket) bound
to the same address with SO_REUSEPORT, so the kernel spreads new connections over
them; they share one store that several processes may use (Redis), which makes them
act as one server, as separate instances would. Stores that one process must own
(jsonl, sqlite, memory) are refused for more than one worker.

The supervisor forks the workers and does nothing else: it holds the port (bound, not
listening, so that a worker started again finds the same port, even one picked with
``--port 0``), restarts a worker that dies (after a backoff that grows while workers
keep dying young, and at most ``RESTART_BURST`` restarts a minute), and passes SIGTERM
and SIGINT on to every worker for a graceful shutdown, exiting once all have exited
(a second signal kills those still stopping; a worker takes no second signal as the end
of its stop, server/stop_bounds.py). A worker that exits with status 2 (a configuration
error) is not restarted: the supervisor stops the others and exits 2.

A worker's exit status says how it ended: 0 a clean stop; 1 (``STOP_UNFINISHED``) a
stop that did not end cleanly, as ``serve`` alone exits 1 (its store's close left at
``--store-close-timeout`` with appends owed to the disk, or the stop past its bound);
2 (``CONFIG_ERROR``) a configuration refused; 3 (``NOT_STARTED``) a start that failed
(the store unreachable, say), restarted like any death. The supervisor's own status,
after a graceful stop (``status_at_stop``, docs/operations.md): 128 + the second signal
when that killed a worker still stopping; else 1 when a worker's stop did not end
cleanly (it exited 1, or died of a signal or a crash in its stop); else 0: every worker
stopped cleanly or was not serving (one that had not started, or was still starting
and ended with the signal, owed nothing). 2 stays 2.

A worker ends with its supervisor (Linux): killed with SIGKILL (the OOM killer, an
operator's ``kill -9``, a crash), the supervisor leaves no worker serving on the port
with nobody to stop or restart it. Each worker asks the kernel for SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``) and stops as on the supervisor's own SIGTERM. The
kernel sends it when the *thread* that forked the worker ends, so the supervisor runs
on the main thread only. Elsewhere workers outlive a killed supervisor.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final

import structlog

from bamboo_session.persistence.url import parse_store_url

from .config import ServerConfig
from .stop_bounds import STORE_UNFINISHED

log = structlog.get_logger("bamboo_session.supervisor")

SHARED_SCHEMES: Final = frozenset({"redis"})  # stores several processes may share
BACKOFF_INITIAL: Final = 0.5  # seconds before restarting a worker that died young
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 10.0  # a worker that lived this long died of something new
RESTART_BURST: Final = 10  # restarts within RESTART_WINDOW at most, over all workers
RESTART_WINDOW: Final = 60.0
STOP_UNFINISHED: Final = STORE_UNFINISHED  # a worker's (and serve's) unclean stop: 1
CONFIG_ERROR: Final = 2  # a worker's exit status for a bad configuration: not retried
NOT_STARTED: Final = 3  # a worker's exit status when it could not start: restarted
# A worker's exits at a stop that are no failed stop: a clean one, and those of a worker
# not serving (its start failed, or the stop's signal came while it was starting).
_NOT_A_FAILED_STOP: Final = frozenset(
    {0, CONFIG_ERROR, NOT_STARTED, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT}
)
_SIGNALS: Final = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

Worker = Callable[[ServerConfig, int], int]  # (config, worker number) -> exit status


def check_workers(config: ServerConfig) -> None:
    """ValueError when ``config`` asks for several workers on a store one process owns."""
    if config.workers < 1:
        raise ValueError("--workers must be at least 1")
    scheme = parse_store_url(config.store_url()).scheme
    if config.workers > 1 and scheme not in SHARED_SCHEMES:
        raise ValueError(
            f"--workers {config.workers} needs a store several processes can share "
            f"(redis://); a {scheme} store belongs to one process"
        )


@dataclasses.dataclass
class Slot:
    """One worker's place: the process in it now, and how its last ones fared."""

    number: int
    pid: int | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each soon after its start
    restart_at: float | None = None


class Supervisor:
    def __init__(self, config: ServerConfig, worker: Worker) -> None:
        check_workers(config)
        self.config = config
        self.worker = worker
        self.slots = [Slot(number) for number in range(1, config.workers + 1)]
        self.restarts: collections.deque[float] = collections.deque()
        self.stopping = False
        self._forced_by = 0  # the second signal, which SIGKILLs the workers still stopping
        self.status = 0
        self._port_holder: socket.socket | None = None

    def run(self) -> int:
        """Start the workers and look after them until they have all exited."""
        if threading.current_thread() is not threading.main_thread():
            # The parent-death signal comes when the thread that forked a worker ends.
            raise RuntimeError("the supervisor runs on the main thread")
        self._pid = os.getpid()
        self._port_holder = hold_port(self.config.host, self.config.port)
        port = self._port_holder.getsockname()[1]
        self.worker_config = self.config.replace(port=port)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            log.info("supervising", workers=len(self.slots), port=port, pid=os.getpid())
            for slot in self.slots:
                self._start(slot)
            while any(slot.pid is not None for slot in self.slots) or not self.stopping:
                self._wait_and_handle()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            self._port_holder.close()
        log.info("workers stopped", status=self.status)
        return self.status

    # -- the loop -----------------------------------------------------------------

    def _wait_and_handle(self) -> None:
        pending = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(pending) - time.monotonic()) if pending else 3600.0
        info = signal.sigtimedwait(_SIGNALS, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            self._stop(info.si_signo)
        self._reap()
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is None or slot.restart_at > now or self.stopping:
                continue
            allowed = self._next_restart_allowed(now)
            if allowed > now:
                slot.restart_at = allowed
                wait = round(allowed - now, 2)
                log.warning("too many restarts; waiting", worker=slot.number, seconds=wait)
            else:
                self._start(slot)

    def _stop(self, signum: int) -> None:
        """First signal: pass it on (a graceful shutdown). Another: kill the workers."""
        forced = self.stopping
        self.stopping = True
        if forced:
            self._forced_by = signum
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # exited already
                    os.kill(slot.pid, signal.SIGKILL if forced else signum)
        log.info("stopping workers", signal=signal.Signals(signum).name, forced=forced)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._exited(slot, os.waitstatus_to_exitcode(wait_status))

    def _exited(self, slot: Slot, code: int) -> None:
        slot.pid = None
        now = time.monotonic()
        if self.stopping:
            log.info("worker exited", worker=slot.number, status=code)
            if status_at_stop(0, code, self._forced_by) == STOP_UNFINISHED:
                log.error("a worker's stop did not end cleanly", worker=slot.number, status=code)
            self.status = status_at_stop(self.status, code, self._forced_by)
            return
        if code == CONFIG_ERROR:
            log.error("worker refused its configuration; stopping", worker=slot.number)
            self.status = CONFIG_ERROR
            self._stop(signal.SIGTERM)
            return
        slot.failures = 1 if now - slot.started >= STABLE_AFTER else slot.failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (slot.failures - 1))
        slot.restart_at = now + delay
        log.warning(
            "worker died; restarting",
            worker=slot.number,
            status=code,
            restart_in=round(slot.restart_at - now, 2),
        )

    def _next_restart_allowed(self, now: float) -> float:
        restarts = self.restarts
        while restarts and restarts[0] <= now - RESTART_WINDOW:
            restarts.popleft()
        return restarts[0] + RESTART_WINDOW if len(restarts) >= RESTART_BURST else now

    # -- workers --------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        if slot.restart_at is not None:
            self.restarts.append(time.monotonic())
        slot.restart_at = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._be_worker(slot.number)
        slot.pid = pid
        slot.started = time.monotonic()
        log.info("worker started", worker=slot.number, pid=pid)

    def _be_worker(self, number: int) -> None:
        """In the child: run one server, then exit with its status (never returns)."""
        status = 1
        try:
            if self._port_holder is not None:
                self._port_holder.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            if not self._ends_with_supervisor(number):
                status = 0  # the supervisor is gone already: stopped before starting
                return
            status = self.worker(self.worker_config, number)
        except KeyboardInterrupt:
            status = 130
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    def _ends_with_supervisor(self, number: int) -> bool:
        """In the child: :func:`end_with_parent`, and False if the supervisor is gone.
        A kernel or sandbox (seccomp) that refuses prctl leaves the worker serving as
        it would elsewhere, with a warning, rather than failing every start and restart
        of every worker."""
        try:
            return end_with_parent(self._pid)
        except OSError as exc:
            log.warning("worker will outlive a killed supervisor", worker=number, error=str(exc))
            return True


def status_at_stop(status: int, code: int, forced_by: int) -> int:
    """The supervisor's exit status once a worker exited with ``code`` in a graceful
    stop, from ``status`` so far; ``forced_by``: the second signal, if one came (it
    SIGKILLs the workers still stopping). A configuration error stays; a worker killed
    by the second signal makes it 128 + that signal, as ``serve`` alone exits at a
    second one (stop_bounds.py); a worker whose stop did not end cleanly makes it
    ``STOP_UNFINISHED`` (before, 0: a service manager took such a stop for a clean one);
    a worker that was not serving leaves it as it is."""
    if status == CONFIG_ERROR or status > 128:
        return status
    if code == -signal.SIGKILL and forced_by:
        return 128 + forced_by
    if code not in _NOT_A_FAILED_STOP:
        return STOP_UNFINISHED
    return status


def end_with_parent(parent_pid: int) -> bool:
    """In a forked worker (Linux): SIGTERM when its parent, ``parent_pid``, dies. False
    when the parent died before that was asked (the worker was handed to another
    process already), so that no signal will come."""
    if _libc is None:
        return True
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    return os.getppid() == parent_pid


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and not listening: it keeps
    the port (``port`` 0 picks one) for the workers, who bind it the same way, and
    takes no connection. OSError if the port is taken by a process without it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except BaseException:
        holder.close()
        raise
    return holder
