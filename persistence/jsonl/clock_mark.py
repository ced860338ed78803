"""ClockMarkFile: ``<data dir>/CLOCK``, a time past every time the JSONL store's clock
has given (persistence/clock.py), which the store's next open starts its clock from.

The store writes a session's moves among the live states (a park at a peer's close, an
attach's ``active``) and its activity with its next checkpoint, lazily: a ``kill -9``
loses them. Their times were read meanwhile (an HTTP read, a listing), and the next
open started its clock from the newest time on disk: with the machine's clock set
back while the server was down, the restart's park stamped the session's
``updated_at`` behind the one read before the kill, and an ``updated_since`` cursor
missed it (tests/test_jsonl_clock_mark.py). So the mark is kept ``LEASE`` ahead of
the newest time given: written again, on a thread of its own, once a time given is
within ``LEASE / 2`` of it, and at once, on the caller's thread, by a time past it (a
step forward of the wall clock, or a thread held up half a second), before that time
goes out; a clean close writes the newest time given, so that the next open does not
start ahead. Written with ``pwrite`` over the same 21 bytes (a write a ``kill -9``
cannot tear, to the page cache: microseconds), synced on the thread (a power loss may
lose the last one, as it loses the lazy states' checkpoints too). After a crash the clock
starts up to ``LEASE`` ahead of the last time given: held ahead, it runs at half
speed until the wall clock has caught up, up to two seconds. A mark that cannot be
read (damaged, or written by hand) is warned of and left out; one that cannot be
written is warned of once, and the store goes on without it."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from ..clock import StoreClock

log = logging.getLogger(__name__)

MARK_NAME: Final = "CLOCK"
LEASE: Final = timedelta(seconds=1)  # how far past the newest time given the mark is
_RENEW: Final = LEASE / 2  # a time given this near the mark has it written again
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER: Final = datetime.min.replace(tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def read_mark(base: Path) -> datetime | None:
    """The time the store's last process marked, if it left one that reads."""
    path = base / MARK_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the store's clock mark %s: %s", path, exc)
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(text.strip()))
    except (ValueError, OverflowError):
        log.warning("the store's clock mark %s holds %r, not a time: left out", path, text[:40])
        return None


class ClockMarkFile:
    """The mark of one store open for writing (a ``ClockMark`` of persistence/clock.py)."""

    def __init__(self, base: Path) -> None:
        self._path = base / MARK_NAME
        self._fd: int | None = None
        self._lock = threading.Lock()  # held for a pwrite, never for a sync
        self._wake = threading.Condition(self._lock)
        self._on_disk = _NEVER  # the mark written (to the OS at least)
        self._renew_at = _NEVER  # a time given past this has it written again
        self._wanted = _NEVER  # the mark the thread is to write and sync next
        self._stopping = False
        self._failed = False  # said once; not tried again (every stamp would)
        self._thread = threading.Thread(target=self._work, name="bamboo-clock-mark", daemon=True)

    def open(self, newest: datetime) -> None:
        """Opens the file, writes a mark past ``newest`` (the clock's now at the
        store's open) before any time is given, and starts the thread."""
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._fail(exc)
            return
        with self._lock:
            self._put(newest + LEASE)
        self._sync()
        self._thread.start()

    def given(self, moment: datetime) -> None:
        """``moment`` was given: the mark is written again if it is near (on the
        thread) or passed (here, before the time goes out)."""
        if moment < self._renew_at or self._fd is None or self._failed:
            return  # (read without the lock: a stale read only takes the lock below)
        with self._lock:
            if moment > self._on_disk:
                self._put(moment + LEASE)  # the thread syncs it
            self._wanted = max(self._wanted, moment + LEASE)
            self._wake.notify()

    def close(self, newest: datetime) -> None:
        """Stops the thread and writes ``newest`` (every time given is at or before
        it, and every state on disk): the next open starts from it, not ahead."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()
        if self._fd is None:
            return
        with self._lock:
            self._put(newest)
        self._sync()
        os.close(self._fd)
        self._fd = None

    def _work(self) -> None:
        synced = self._on_disk
        while True:
            with self._lock:
                while not self._stopping and self._wanted <= synced:
                    self._wake.wait()
                if self._stopping:
                    return
                wanted = self._wanted
                if wanted > self._on_disk:
                    self._put(wanted)
            self._sync()
            synced = wanted

    def _put(self, mark: datetime) -> None:
        """Writes ``mark`` (under the lock: the writes land in the order made)."""
        if self._fd is None or self._failed:
            return
        try:
            os.pwrite(self._fd, b"%020d\n" % _micros(mark), 0)
        except OSError as exc:
            self._fail(exc)
        else:
            self._on_disk, self._renew_at = mark, mark - _RENEW

    def _sync(self) -> None:
        if self._fd is None or self._failed:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "cannot write the store's clock mark %s (%s): after a crash, times may be "
                "stamped behind some read before it if the clock was set back meanwhile",
                self._path,
                exc,
            )


async def start_mark(clock: StoreClock, base: Path) -> None:
    """At a writable open, once every time on disk is ``saw``: the clock past the
    mark the last process left, then a mark of this one's, told every time given."""
    clock.saw(await asyncio.to_thread(read_mark, base))
    mark = ClockMarkFile(base)
    await asyncio.to_thread(mark.open, clock.now())
    clock.mark = mark


async def stop_mark(clock: StoreClock) -> None:
    """At the close, once every state is on disk (or could not be): the newest time."""
    mark, clock.mark = clock.mark, None
    if isinstance(mark, ClockMarkFile):
        await asyncio.to_thread(mark.close, clock.now())
