"""ClockMarkFile: ``<data dir>/CLOCK``, the newest time the JSONL store stamped a
change it writes lazily with, which the store's next open starts its clock from
(persistence/clock.py ``saw``).

The store writes a session's moves among the live states (a park at a peer's close, an
attach's ``active``) and its activity with its next checkpoint, lazily: a ``kill -9``
loses them. Their times were read meanwhile (an HTTP read, a listing), and the next
open started its clock from the newest time on disk: with the machine's clock set
back while the server was down, the restart's park stamped the session's
``updated_at`` behind the one read before the kill, and an ``updated_since`` cursor
missed it (tests/test_jsonl_clock_mark.py). Appends need no mark: their events' ``ts``
are in the log, which the open reads them back from.

So each such change writes its time here, before the call returns: one ``pwrite`` of
the same 21 bytes (a write a ``kill -9`` cannot tear, to the page cache: a couple of
microseconds on the loop, once per state move or touch, once per batch of a park),
only when later than the time written before; its room is taken when the file is
made, so that a disk that fills later still takes it. It is synced with each round of
checkpoints and at the close, off the loop: a power loss may lose the marks since, as
it loses the lazy changes themselves. The mark is the exact time (a mark kept ahead
of the times given, written less often, started the clock ahead after every crash,
and sessions made then lived longer than their TTL). A mark that cannot be read
(damaged, or written by hand) is warned of and left out; one that cannot be written is
warned of once, and the store goes on without it.

A mark more than ``AHEAD_MOST`` past both the machine's clock and the newest time the
store's files hold is an error logged and left out (the next change written lazily
writes over it): a change the mark stands for was made at most a round of checkpoints
after the newest one on disk, and such a mark is a clock that was wrong once (a
machine booted years ahead), or a file written by hand. Taken, it held the store's
clock ahead at half speed for twice as long: a mark ten years on, twenty years of
times in the future. The file is opened with ``O_NOFOLLOW`` (a symlink in its place
is refused, not written through: a pwrite over another file's first bytes), written
only if a regular file (a FIFO or a device is refused), read up to a few bytes without
waiting (a FIFO hung the start; a file of a terabyte was read whole), and cut to its
size when found longer (a longer file never read again once a mark was written over
its start)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from bamboo_session.protocol.models import utcnow

log = logging.getLogger(__name__)

MARK_NAME: Final = "CLOCK"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER: Final = datetime.min.replace(tzinfo=UTC)
_MARK_BYTES: Final = 21  # 20 digits and a newline
_READ_MOST: Final = 64  # what a read takes of the file: past a mark and its padding
# How far past both the machine's clock and the newest time the store's files hold a
# mark is taken: its changes are at most a round of checkpoints (5 s by default) past
# the newest on disk.
AHEAD_MOST: Final = timedelta(hours=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def read_mark(base: Path) -> datetime | None:
    """The time the store's last process marked, if it left one that reads."""
    path = base / MARK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the store's clock mark %s: %s", path, exc)
        return None
    try:
        text = os.read(fd, _READ_MOST)
    except OSError as exc:
        log.warning("cannot read the store's clock mark %s: %s", path, exc)
        return None
    finally:
        os.close(fd)
    text = text.strip(b"\0")  # (its room, taken at its making)
    if not text:
        return None  # made, and no change written lazily since
    try:
        return _EPOCH + timedelta(microseconds=int(text.strip()))
    except (ValueError, OverflowError):
        log.warning("the store's clock mark %s holds %r, not a time: left out", path, text[:40])
        return None


class ClockMarkFile:
    """The mark of one store open for writing."""

    def __init__(self, base: Path) -> None:
        self._path = base / MARK_NAME
        self._fd: int | None = None
        self._written = _NEVER  # the mark in the file (to the OS at least)
        self._synced = _NEVER
        self._failed = False  # said once; not tried again (every change would)

    def open(self, now: datetime | None = None) -> datetime | None:
        """The mark the store's last process left, if one reads and is at most
        ``AHEAD_MOST`` past ``now`` (the store's clock: the machine's, or the newest
        time its files hold; by default the machine's); then the file opened (or
        created) for this one's. Blocking, on a thread."""
        now = utcnow() if now is None else now
        left = read_mark(self._path.parent)
        if left is not None and left - now > AHEAD_MOST:
            log.error(
                "the store's clock mark %s is %s ahead of this machine's clock and of "
                "every time the store holds (%s): left out, as a clock that was wrong "
                "once; if it is this machine's clock that is wrong, set it right and "
                "restart (docs/design.md)",
                self._path,
                left - now,
                left.isoformat(),
            )
            left = None  # and written over by the first change written lazily
        if left is not None:  # never written over with less: an older import's time
            self._written = self._synced = left
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            self._fail(exc)
            return left
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):  # a FIFO, a device: not written to
            os.close(fd)
            self._fail(OSError(errno.EINVAL, "not a regular file"))
            return left
        self._fd = fd
        if found.st_size > _MARK_BYTES:  # (a mark reads whole, or not)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, _MARK_BYTES)
        # Its room taken now: a disk that fills later still takes every mark. (A full
        # one takes none now: then the first mark tries.)
        with contextlib.suppress(OSError):
            os.posix_fallocate(self._fd, 0, _MARK_BYTES)
        return left

    def wrote(self, moment: datetime) -> None:
        """A change stamped ``moment`` is written lazily: the mark is at least it,
        before the caller goes on (on the loop)."""
        if moment <= self._written or self._fd is None or self._failed:
            return
        try:
            os.pwrite(self._fd, b"%020d\n" % _micros(moment), 0)
        except OSError as exc:
            self._fail(exc)
        else:
            self._written = moment

    def sync(self) -> None:
        """Syncs the mark if it moved since (blocking, on a thread: the checkpoints')."""
        written = self._written
        if written <= self._synced or self._fd is None or self._failed:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._fail(exc)
        else:
            self._synced = written

    def close(self) -> None:
        """Syncs and closes (blocking, on a thread)."""
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "cannot write the store's clock mark %s (%s): after a crash, times may be "
                "stamped behind some read before it if the clock was set back meanwhile",
                self._path,
                exc,
            )
