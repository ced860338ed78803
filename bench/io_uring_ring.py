"""An io_uring that runs a WAL's ``fdatasync`` for an asyncio loop, for
``bench/io_uring_probe.py`` (an experiment, not the server's).

The loop's thread prepares the operations and submits them with one ``io_uring_enter``;
the kernel runs the fsync on one of its ``iou-wrk`` worker threads (a file's fsync
cannot complete without blocking), which posts the completion and signals an eventfd
registered with the ring, or makes the ring's own descriptor readable; the loop watches
one or the other as it watches any socket, and reads every completion then. Each
operation's ``user_data`` names the future it settles. Buffers handed to the kernel are
kept referenced until their completion: the bindings (PyPI ``liburing``) pass a pointer
into the ``bytes`` and keep nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
from typing import Any

try:
    import liburing
except ImportError:  # the io_uring modes are skipped
    liburing = None


# A ring made and torn down in a child first: PyPI's liburing wheel is built for a
# newer CPU than some (an AMD EPYC without its instructions dies of SIGILL making a
# Ring), and a signal in this process could not be caught.
_TRIAL = "import liburing; r = liburing.Ring(); liburing.io_uring_queue_init(2, r)"


def ring_unavailable() -> str | None:
    """Why no ring can run here, or None."""
    if liburing is None:
        return "the liburing module is not installed (pip install liburing)"
    try:
        trial = subprocess.run([sys.executable, "-c", _TRIAL], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "a trial ring made in a child did not come back within 60 s"
    if trial.returncode < 0:
        name = signal.Signals(-trial.returncode).name
        return f"the liburing module dies of {name} on this CPU (its wheel's build)"
    ring = liburing.Ring()
    try:
        liburing.io_uring_queue_init(2, ring)
    except OSError as exc:  # ENOSYS, EPERM (io_uring disabled by sysctl or seccomp)
        return f"io_uring_setup failed: {exc}"
    liburing.io_uring_queue_exit(ring)
    return None


class RingSyncer:
    """One ring, driven from the running loop's thread only."""

    def __init__(self, wake: str = "eventfd", entries: int = 8) -> None:
        assert liburing is not None
        self._loop = asyncio.get_running_loop()
        self._ring = liburing.Ring()
        liburing.io_uring_queue_init(entries, self._ring)
        self._cqe = liburing.Cqe()
        self._eventfd = -1
        if wake == "eventfd":
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            liburing.io_uring_register_eventfd(self._ring, self._eventfd)
            self._watched = self._eventfd
        else:
            self._watched = self._ring.ring_fd
        self._waiting: dict[int, tuple[asyncio.Future[int], Any]] = {}
        self._next_id = 1
        self._loop.add_reader(self._watched, self._on_ready)

    async def datasync(self, fd: int) -> None:
        """``fdatasync(fd)`` by the ring; its error raised as an OSError."""
        done = self._prepare_fsync(fd)
        self._submit()
        check(await done)

    async def write_and_datasync(self, fd: int, data: bytes, offset: int) -> None:
        """``pwrite`` then ``fdatasync``, linked: the fsync runs only if the write wrote
        every byte (else it completes with ECANCELED)."""
        sqe = self._sqe()
        liburing.io_uring_prep_write(sqe, fd, data, offset)
        sqe.flags |= liburing.IOSQE_IO_LINK
        written = self._track(sqe, data)
        synced = self._prepare_fsync(fd)
        self._submit()
        wrote = await written
        result = await synced
        check(wrote)
        if wrote != len(data):
            raise OSError(errno.EIO, f"short write ({wrote} of {len(data)} bytes)")
        check(result)

    def close(self) -> None:
        self._loop.remove_reader(self._watched)
        liburing.io_uring_queue_exit(self._ring)  # waits for operations still running
        if self._eventfd >= 0:
            os.close(self._eventfd)
        for future, _kept in self._waiting.values():
            if not future.done():
                future.set_exception(OSError(errno.EIO, "the ring was closed"))
        self._waiting.clear()

    def _prepare_fsync(self, fd: int) -> asyncio.Future[int]:
        sqe = self._sqe()
        liburing.io_uring_prep_fsync(sqe, fd, liburing.IORING_FSYNC_DATASYNC)
        return self._track(sqe, None)

    def _sqe(self) -> Any:
        sqe = liburing.io_uring_get_sqe(self._ring)
        if sqe is None:  # the submission queue is full: one commit at a time never fills it
            raise OSError(errno.EBUSY, "the io_uring submission queue is full")
        return sqe

    def _track(self, sqe: Any, kept: Any) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self._loop.create_future()
        user_data, self._next_id = self._next_id, self._next_id + 1
        sqe.user_data = user_data
        self._waiting[user_data] = (future, kept)
        return future

    def _submit(self) -> None:
        liburing.io_uring_submit(self._ring)

    def _on_ready(self) -> None:
        if self._eventfd >= 0:
            with contextlib.suppress(BlockingIOError):  # read by an earlier call
                os.eventfd_read(self._eventfd)
        while True:
            try:
                liburing.io_uring_peek_cqe(self._ring, self._cqe)
            except BlockingIOError:
                return
            entry = self._cqe[0]
            user_data = entry.user_data
            try:
                result = entry.res  # the bindings raise a negative result as an OSError
            except OSError as exc:
                result = -(exc.errno or errno.EIO)
            liburing.io_uring_cqe_seen(self._ring, entry)
            future, _kept = self._waiting.pop(user_data, (None, None))
            if future is not None and not future.done():
                future.set_result(result)


def check(result: int) -> None:
    """A completion's result: a negative errno is raised."""
    if result < 0:
        raise OSError(-result, os.strerror(-result))
