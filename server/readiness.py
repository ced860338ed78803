"""Readiness: can an append succeed right now? What ``/readyz`` answers.

Not ready while the store is not open (``storage.ready``), or says why it is not
(``NotReadyReason``: on Redis, Redis away or the pub/sub connection lost, with Redis's
address and the error; Redis evicting the store's keys, ``maxmemory-policy
allkeys-*``); while it does not answer a
read within ``--store-read-timeout`` (a stopped Redis, a file another process keeps
locked): ``/readyz`` reads one session's metadata, at most once a second; while an
append has waited that long for the store (a disk that stalls writes, a write lock
another process holds, with reads still answered); and from the
moment an append fails for a reason of the store's (disk full, I/O error, store
unreachable; not ``SessionRefused``, a refusal of one session) until appends work
again: the next append, or a probe, begun after the failure that succeeds (one under
way when it is reported may have written before it). A session's creation that fails
so is taken as a failed append (an instance taking only creates while Redis refuses
writes was ready). Not so the failure of one session's
own file (``SessionLogFailed``: its log at the file size limit, a file the store may
not write; on Redis, a key of the session's that something else wrote over) while an
append of another session succeeded less than ``ALONE_WITHIN`` seconds before: the
store takes appends; a server out of rotation would serve that session no better, and
every other session worse.

Why this rule: the store says what failed, as data (the error's class: from the errno
of the file's own open or write; from Redis's error code and the type the session's
own keys hold), so a session's fault is told from the store's at its first failure,
however many sessions fail so and however often each fails and succeeds in turn (a
log near its size limit: some appends fit, some do not). No table of failing sessions
is kept, to outgrow or go stale: what the rule holds is three fields, whatever the
load. A failure of the store's (disk full, I/O error, store unreachable, a failure of
the WAL every session shares), or any the store does not mark as the session's own,
is 503 at once; so is a directory every log lives in that refuses them (the JSONL
store tells it from a log's own mode). The window keeps a fault of every file at once
(a mass change of the logs' modes: EACCES at each) from passing for each session's
own while no other session's append succeeds: the first failure ``ALONE_WITHIN``
after the last success is the store's. It does not while sessions whose logs the
store holds open go on appending (a log's mode binds its next open only): then each
other session's failure passes for its own, and the log tells of them. A session
whose file fails while no other appends is taken as the store's too: nothing shows
that other sessions' appends would succeed.

Without a probe, a server that a load balancer takes out of rotation for its 503 would
get no more appends to prove itself well, so while appends fail, ``/readyz`` probes (at
most once a second) what a failed append needed: for a file store, writing and syncing
as many bytes as the largest frame in each directory its appends write in, as the store
names them (``WriteLocations``: a JSONL store's logs, checkpoints and WAL; an SQLite
file's directory), within the same deadline. Each, not the store's base directory
alone: one of them may fail by itself (made read-only, a mount of its own full or gone),
and a probe beside it would pass while every append failed. A store without files is
trusted again ``RETRY_AFTER`` seconds after its last failure, so that traffic tries it;
if it can tell whether it takes writes (``WriteProbe``: Redis, which refuses writes
while it cannot persist, its disk full), only once it says it does, asked within the
same deadline. Not sooner: its probe sees refusals of every write, not every failure
of the store's (an index every session's appends write, written over by another
client). Without it, with Redis still refusing every write, ``/readyz`` answered 200
again ``RETRY_AFTER`` after the last failure, and a load balancer sent traffic back
to fail (bench/redis_disk_full.py). A store in files that can tell is asked too, after
its directories: the SQLite store takes its write lock in an empty transaction, which
another process may hold (the ``sqlite3`` shell in a transaction) while every
directory takes writes; before, ``/readyz`` answered 200 as soon as an append had
failed for that lock, still held (tests/test_sqlite_readyz_under_lock.py).

A read or a probe the store does not answer is not started again until it ends (each
would hold a thread, or a connection): ``/readyz`` answers 503 meanwhile, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from bamboo_session.persistence.base import (
    SessionExists,
    SessionLogFailed,
    SessionRefused,
    Storage,
    StorageError,
    StorageFull,
)
from bamboo_session.persistence.capabilities import NotReadyReason, WriteLocations, WriteProbe
from bamboo_session.protocol.models import SessionMetadata

from .append_failures import AppendFailures
from .command_failures import CommandFailures
from .outage_log import OutageLog
from .pages import PageReads, SharedRead

if TYPE_CHECKING:
    from .owed_states import OwedStates
    from .status import SessionStatus

PROBE_EVERY: Final = 1.0  # seconds between probes while appends fail, and between reads
RETRY_AFTER: Final = 10.0  # seconds a store that cannot be probed stays unready
# Seconds another session's append that succeeded shows the store takes appends, for a
# session whose own file fails. Failures the store says are its own are let pass that
# long only: longer, a fault of every file at once (each log made unwritable) would
# keep /readyz ready longer; shorter, one session's failures (a client retrying every
# few seconds) among good sessions that append less often would flap it to 503.
ALONE_WITHIN: Final = 10.0
# The session whose metadata /readyz reads: any id would do (it need not exist).
READ_PROBE_ID: Final = "bamboo-readyz"
# The parked sessions' looks are told in the actors' log, where they were.
_ACTOR_LOG = structlog.get_logger("bamboo_session.actor")


class AppendHealth:
    """What the session actors report of their appends (owned by the manager): the last
    failure of the store's, who appended last, and the appends the store has not
    answered yet; and, for the log, the outage under way (``failures``; a probe that
    succeeds does not end it, an append does), that of the other commands the store
    failed (``command_failures``: an attach, a state change), and that of parked
    sessions' looks (``parked_looks``: one line when the first fails, one when a look
    works again); and the states actors retire owing the store (``owe``), for the
    manager's queue that writes them once the store answers (server/owed_states.py)."""

    __slots__ = (
        "_last_appender",
        "_last_at",
        "_other_at",
        "_waiting",
        "alone_within",
        "command_failures",
        "failed_at",
        "failure",
        "failures",
        "owed_states",
        "parked_looks",
        "reported",
    )

    def __init__(self) -> None:
        self.failures = AppendFailures()
        self.command_failures = CommandFailures()
        self.parked_looks = OutageLog("parked session", _ACTOR_LOG)
        self.owed_states: OwedStates | None = None  # the manager's
        self.failure: str | None = None
        self.failed_at = 0.0
        # Failures of the store's reported so far: a probe read it as it began, and
        # clears only the failures reported before that (see probed).
        self.reported = 0
        self.alone_within = ALONE_WITHIN
        # The session of the last append that succeeded and when (monotonic clock), and
        # when the last one of any other session did (-inf: none yet): enough to say,
        # whatever session fails, when another one last appended.
        self._last_appender: str | None = None
        self._last_at = self._other_at = -math.inf
        # Store appends under way, by a key of each, with when each began: a dict keeps
        # them in the order they began, so the first is the oldest.
        self._waiting: dict[int, float] = {}

    def failed(self, session_id: str, reason: str, events: int, own: bool = False) -> None:
        """A store append of ``events`` events failed; ``own``: for a reason of the
        session's own file, the store says (``SessionLogFailed``). /readyz is 503 until
        appends work, unless the session fails alone; and the log tells of the outage
        (once, then in counts; a failure of the store's also at once)."""
        of_store = self._write_failed(session_id, reason, own)
        self.failures.failed(session_id, reason, events, of_store)

    def _write_failed(self, session_id: str, reason: str, own: bool) -> bool:
        """Whether a failed write is the store's (then /readyz is 503 until appends work)."""
        of_store = not (own and self._another_appended_lately(session_id))
        if of_store:
            self.failure = reason
            self.failed_at = time.monotonic()
            self.reported += 1
        return of_store

    @contextlib.contextmanager
    def creating(self, session_id: str) -> Iterator[None]:
        """Around the store's creation of ``session_id``: one that fails for a reason
        of the store's (Redis refusing writes: ``MISCONF`` with its disk full, ``OOM``
        at its ``maxmemory``; a full disk) is taken as a failed append is: /readyz is
        503 until appends work, and the log tells of it once an outage (``storage
        failed``, command ``Create``). Before, an instance taking only creates stayed
        ready while every one failed. Not a refusal of that creation alone: the id
        taken, the store at its maximum of sessions, a session the store refused."""
        try:
            yield
        except (SessionExists, StorageFull, SessionRefused):
            raise
        except StorageError as exc:
            self._write_failed(session_id, str(exc), isinstance(exc, SessionLogFailed))
            self.command_failures.store_failed("Create", exc)
            raise

    def _another_appended_lately(self, session_id: str) -> bool:
        """Whether an append of a session other than ``session_id`` succeeded less than
        ``alone_within`` seconds ago."""
        last = self._other_at if session_id == self._last_appender else self._last_at
        return time.monotonic() - last < self.alone_within

    def owe(self, status: SessionStatus) -> None:
        """A retiring actor's state, if the store is still owed it, to the manager's queue."""
        if status.owed and self.owed_states is not None:
            self.owed_states.owe(status.session_id, status.epoch)

    def succeeded(self) -> None:
        """Appends work: the store is trusted again."""
        self.failure = None

    def probed(self, reported: int) -> None:
        """A probe that began when :attr:`reported` was ``reported`` succeeded: appends
        work, unless the store failed again since it began. That failure may have come
        after the probe wrote (a disk that filled meanwhile): only a probe begun after
        it says it is over."""
        if reported == self.reported:
            self.failure = None

    def appended(self, session_id: str, now: float, reported: int) -> None:
        """An append for ``session_id``, begun when :attr:`reported` was ``reported``,
        succeeded at ``now`` (monotonic clock): appends work, unless the store failed
        since it began (it may have been stored before: on Redis, appends of several
        sessions are under way at once), and the outage, if any, may be over. Told of
        every append: kept cheap."""
        if session_id != self._last_appender:
            self._other_at = self._last_at
            self._last_appender = session_id
        self._last_at = now
        if reported == self.reported:
            self.failure = None
        if self.failures.failing:
            self.failures.succeeded(session_id)

    def began(self, key: int, at: float) -> int:
        """A store append began at ``at``; the store's failures reported so far, the
        ones its success may clear (:meth:`appended`)."""
        self._waiting[key] = at
        return self.reported

    def ended(self, key: int) -> None:
        del self._waiting[key]

    def longest_wait(self) -> float:
        """Seconds the oldest store append under way has waited (0: none is)."""
        for began in self._waiting.values():
            return time.monotonic() - began
        return 0.0


class Readiness:
    def __init__(
        self,
        storage: Storage,
        health: AppendHealth,
        probe_bytes: int,
        reads: PageReads,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self.storage = storage
        self.serving = serving
        self.health = health
        self._says_why = storage if isinstance(storage, NotReadyReason) else None
        # Where the store's appends write (none: a store without files, or read-only).
        self._probe_dirs = storage.write_locations() if isinstance(storage, WriteLocations) else ()
        # A store that can say whether it takes writes (Redis; SQLite, whose write lock
        # another process may hold, which no directory's probe sees): asked after them.
        self._asks_store = isinstance(storage, WriteProbe)
        self._probe_bytes = probe_bytes
        self.probe_every = PROBE_EVERY  # a test sets 0: a probe at each /readyz
        self._probed_at = -PROBE_EVERY
        self._reads = reads
        self._probing = SharedRead(reads, self._write_probe)
        self._reading = SharedRead(reads, self._read_store)
        self._read_at = -PROBE_EVERY
        self._checking: asyncio.Future[str | None] | None = None  # the last read's outcome

    async def reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if not self.serving():
            return "not serving (starting or stopping)"
        not_ready = self._store_not_ready()
        if not_ready is not None:
            return not_ready
        unanswered = await self._store_unanswered()
        if unanswered is not None:
            return unanswered
        health = self.health
        waited = health.longest_wait()
        if waited >= self._reads.timeout:  # a disk or a lock that holds appends, not reads
            return f"an append has waited {waited:.1f} s for the store"
        if health.failure is None:
            return None
        failing = f"appends are failing: {health.failure}"
        if not self._probe_dirs:  # trusted again RETRY_AFTER on, if it takes writes then
            if time.monotonic() - health.failed_at < RETRY_AFTER:
                return failing
            if not self._asks_store:
                health.succeeded()
                return None
        if await self._probe():
            return None
        return failing

    def _store_not_ready(self) -> str | None:
        """Why the store says it is not ready, in its own words where it has them."""
        if self._says_why is not None:
            reason = self._says_why.not_ready_reason
            if reason is not None:
                return reason
        return None if self.storage.ready else "storage is not open"

    async def _store_unanswered(self) -> str | None:
        """Why the store seems not to answer reads (None: it answered the last read,
        made at most ``PROBE_EVERY`` ago). A call that comes while a read is under way
        gets that read's outcome, not the one before it."""
        checking = self._checking
        stale = time.monotonic() - self._read_at >= PROBE_EVERY
        if checking is None or (checking.done() and stale):
            self._read_at = time.monotonic()
            checking = self._checking = asyncio.ensure_future(self._check_store())
        return await asyncio.shield(checking)

    async def _check_store(self) -> str | None:
        try:
            await self._reading.result()
        except StorageError as exc:  # StoreTimeout among them
            return f"reads from the store fail: {exc}"
        return None

    async def _read_store(self) -> SessionMetadata | None:
        return await self.storage.get_metadata(READ_PROBE_ID)

    async def _probe(self) -> bool:
        """Whether appends should work again: a probe succeeded (now or lately)."""
        if time.monotonic() - self._probed_at < self.probe_every:
            return self.health.failure is None
        self._probed_at = time.monotonic()
        try:
            began_after = await self._probing.result()
        except (OSError, StorageError):  # StoreTimeout: the disk did not answer in time
            return False  # the reason stays that of the append that failed
        self.health.probed(began_after)
        return self.health.failure is None

    async def _write_probe(self) -> int:
        """Probes every directory, then asks the store if it can tell; the store's
        failures reported when it began."""
        reported = self.health.reported
        if self._probe_dirs:
            await asyncio.to_thread(write_probes, self._probe_dirs, self._probe_bytes)
        if isinstance(self.storage, WriteProbe):
            await self.storage.probe_writes()
        return reported


def write_probes(directories: tuple[Path, ...], size: int) -> None:
    """A probe in each directory, in turn; raises the first one's error."""
    for directory in directories:
        write_probe(directory, size)


def probe_path(directory: Path) -> Path:
    """The file a probe of ``directory`` writes: no store's file is named so (each of
    a session's ends with a suffix of its own). One name, not one per process: a probe
    a crash cut short leaves one file, which the next probe overwrites and removes
    (one process at a time writes a store: its lock)."""
    return directory / ".bamboo-probe"


def write_probe(directory: Path, size: int) -> None:
    """Writes ``size`` bytes in ``directory``, syncs them, removes the file."""
    path = probe_path(directory)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(bytes(size))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
