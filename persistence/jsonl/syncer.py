"""The loop's side of the WAL's sync helper (``sync_helper.py``): the ``fdatasync`` of
each group commit runs in a child process instead of a thread of this one.

Why a process: a thread that syncs must take the GIL back to report, and while the
event loop is busy it waits for it, up to the interpreter's switch interval (5 ms),
with a dozen futex calls and context switches per commit. The child has a GIL of its
own; the loop sends one byte on a socket and reads four back when it becomes readable,
as it does for any peer. The commit is acknowledged only once the child answered that
the sync succeeded, so a crash of either process loses no acknowledged append.

A close kills a helper that never answered a sync: nothing is in flight by then (the
writer's commits are done), and it may still be starting its interpreter, which a
store opened and closed without a synced commit (a CLI tool, a read) would wait for,
and for its exit. One that answered is up: it sees the end of its stream and exits.

A sync, once asked for, runs to its answer: a cancellation of the task that awaits it
comes once the answer is in (kept in ``Syncer.cancelled_answer``), so that the writer
knows its commit's outcome without a task and a shield around each commit. A commit
started outside the writer's task (``writer.py``) asks with ``ask`` instead: no future
and no task to resume, its callback called from the socket's readable callback (or by
the helper's failure) with what ``sync`` would have returned.

The helper is optional: where it cannot start (no ``SOCK_SEQPACKET`` or descriptor
passing on this platform), or once it failed, the writer syncs on its I/O thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HELPER = Path(__file__).with_name("sync_helper.py")


@dataclass(frozen=True, slots=True)
class Answered:
    """The answer to a sync whose task was cancelled meanwhile: ``error`` as
    :meth:`Syncer.sync` would have returned it."""

    error: OSError | None


class _Answer(asyncio.Future[bytes]):
    """The helper's answer to one sync. A task cancelled while it awaits one tries to
    cancel it, and is refused: asyncio then raises the cancellation in the task once
    the answer is set, so the answer is never lost to a cancellation."""

    def cancel(self, msg: Any | None = None) -> bool:
        return False


class Syncer:
    """One helper process, one sync at a time (the writer's commits are sequential)."""

    def __init__(self, channel: socket.socket, process: subprocess.Popen[bytes]) -> None:
        self._channel = channel
        self._process = process
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[bytes] | None = None
        self._on_answer: Callable[[OSError | None], None] | None = None  # ``ask``'s
        self._file: object = None  # what the helper syncs: set by ``sync``'s ``key``
        self._answered = False  # it answered a sync: its interpreter is up
        self.broken = False
        # The last sync's answer, when its task was cancelled while it awaited it (the
        # cancellation is asyncio's own: 3.11's ``asyncio.timeout`` and ``TaskGroup``
        # take no subclass of it for theirs, and would let one through).
        self.cancelled_answer: Answered | None = None
        # Read in a context of its own, not a copy of the store's opener's: the answer's
        # callback acknowledges a commit begun outside the writer's task and begins the
        # next (``starts.py``), and what it logs would carry that opener's log fields.
        contextvars.Context().run(self._loop.add_reader, channel.fileno(), self._on_readable)

    @classmethod
    def start(cls) -> Syncer | None:
        """Start a helper, or None where this platform cannot run one."""
        if not hasattr(socket, "send_fds") or not hasattr(os, "fdatasync"):
            return None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return None
        try:
            process = subprocess.Popen(
                # -I -S: no environment, no site packages: the standard library only.
                [sys.executable, "-I", "-S", str(_HELPER), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.warning("no WAL sync helper (%s): syncing on a thread instead", exc)
            ours.close()
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(ours, process)

    @property
    def pid(self) -> int:
        return self._process.pid

    def use(self, key: object, fd: int) -> None:
        """Have the helper sync the file ``fd`` refers to from now on (``key`` names it;
        the helper closes its descriptor of the previous one)."""
        if self.broken or key is self._file or fd < 0:
            return
        try:
            socket.send_fds(self._channel, [b"F"], [fd])
        except OSError as exc:
            self._break(exc)
            return
        self._file = key

    def ask(self, key: object, fd: int, answered: Callable[[OSError | None], None]) -> bool:
        """Ask for a sync of ``fd`` (as ``sync``) without awaiting it: ``answered`` is
        called, never from within this call, with what ``sync`` would return. False, and
        nothing asked, when the helper cannot take it now (broken, no file, the send
        failed): then the caller syncs another way."""
        assert self._waiter is None and self._on_answer is None, "one sync at a time"
        if fd < 0:
            return False
        if key is not self._file:  # a new segment since the last sync
            self.use(key, fd)
        if self.broken:
            return False
        try:
            self._channel.send(b"S")
        except OSError as exc:
            self._break(exc)
            return False
        self._on_answer = answered
        return True

    async def sync(self, key: object, fd: int) -> OSError | None:
        """``fdatasync`` the file ``fd`` refers to. The error, when the sync failed or
        the helper is gone (then nothing may be assumed synced). A cancellation while
        the helper syncs is raised once it answered, and ``cancelled_answer`` holds
        the answer then."""
        assert self._on_answer is None, "one sync at a time"
        self.cancelled_answer = None
        if fd < 0:  # no file: an "S" now would sync the previous one and say so
            return OSError(errno.EBADF, "no file to sync")
        if key is not self._file:  # a new segment since the last sync
            self.use(key, fd)
        if self.broken:
            return OSError(errno.EIO, "the WAL sync helper stopped")
        try:
            self._channel.send(b"S")
        except OSError as exc:
            self._break(exc)
            return OSError(errno.EIO, f"the WAL sync helper stopped: {exc}")
        # Made after the send: the answer is read in a later turn of the loop at the
        # soonest, and a failed send leaves no waiter for ``_break`` to fail unawaited.
        waiter = self._waiter = _Answer(loop=self._loop)
        try:
            answer = await waiter
        except OSError as exc:  # the helper stopped, or the syncer closed, meanwhile
            return OSError(errno.EIO, f"the WAL sync helper stopped: {exc}")
        except asyncio.CancelledError:
            if not waiter.done():  # (the answer refuses to be cancelled: not expected)
                self._waiter = None  # (not failed by the break: nobody awaits it now)
                self._break(RuntimeError("a sync was cancelled"))
                raise
            self.cancelled_answer = Answered(_outcome(waiter))
            raise
        finally:
            self._waiter = None
        return None if answer == _SYNCED else _error(answer)  # (no call for the common one)

    def _on_readable(self) -> None:
        error: OSError | None = None
        try:
            answer = self._channel.recv(16)
        except BlockingIOError:
            return
        except OSError as exc:
            answer, error = b"", exc
        waiter = self._waiter
        if len(answer) != 4:
            self._break(error or EOFError("the helper closed its end"))
            return
        self._answered = True
        answered = self._on_answer
        if answered is not None:  # (``ask``'s: the commit's rest runs here)
            self._on_answer = None
            answered(None if answer == _SYNCED else _error(answer))
        elif waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _break(self, cause: BaseException) -> None:
        if not self.broken:
            self.broken = True
            log.error("the WAL sync helper failed (%s); syncing on a thread from now on", cause)
            self._stop_reading()  # a helper still running sees the end and exits
            self._process.poll()  # reaped now if it is already gone

    def _stop_reading(self) -> None:
        """No answer is read any more: a sync that awaits one fails now (EIO), so that
        nothing waits for ever for an answer that cannot come."""
        self.broken = True
        self._loop.remove_reader(self._channel.fileno())
        self._channel.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(OSError(errno.EIO, "the WAL sync helper stopped"))
        answered = self._on_answer
        if answered is not None:
            self._on_answer = None
            answered(OSError(errno.EIO, "the WAL sync helper stopped"))

    async def close(self) -> None:
        """Close the socket: the helper sees the end of its stream and exits. One that
        never answered a sync is killed instead (see the module's docstring)."""
        # Killed before its stream ends: once ended, one that has started by then would
        # exit of itself, and which of the two came first would depend on the load.
        if not self._answered and self._process.poll() is None:
            self._process.kill()
        if not self.broken:
            self._stop_reading()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._process.wait, 10.0)
        if self._process.poll() is None:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)


_SYNCED = bytes(4)  # the answer to a sync that succeeded: errno 0


def _error(answer: bytes) -> OSError | None:
    """The error a helper's answer (an ``errno``, 4 bytes little-endian) says, if any."""
    code = int.from_bytes(answer, "little")
    return OSError(code, os.strerror(code)) if code else None


def _outcome(answer: asyncio.Future[bytes]) -> OSError | None:
    """What a sync whose waiter was cancelled returns: the helper's answer, or the
    error it ended with."""
    error = answer.exception()
    if error is None:
        return _error(answer.result())
    return error if isinstance(error, OSError) else OSError(errno.EIO, str(error))
