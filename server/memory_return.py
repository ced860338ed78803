"""Giving memory the process has freed back to the system: :class:`MemoryReturn`.

glibc's malloc keeps what Python frees of large blocks (frames of hundreds of KiB,
pages, decoded batches) in its heap for reuse: after the first 1 MiB block is freed,
its mmap threshold rises past that size, so later ones come from the heap, and a freed
block returns to the system only from the heap's top. A burst of peers therefore left
the server's resident size at its peak after every one of them had gone: 400
connections with 1 MiB frames queued behind a waiting page, 52 MiB before, 470 MiB
during, 461 MiB a minute after they closed (the bounds held; the memory did not come
back). So every ``RETURN_EVERY`` seconds, when the heap holds more than
``RETURN_ABOVE`` bytes free (glibc's ``mallinfo2``), ``malloc_trim(0)`` returns its
free pages, in a thread: it may take tens of milliseconds over a large heap, during
which the loop's own mallocs of that arena wait, where a call on the loop would hold
every connection that long. The same burst then ended at 60 MiB. A loop that mallocs
meanwhile (a busy one: frames, pages) waits about as long all the same:
``bench/trim_lag.py`` over 400 MiB freed, the loop's worst lag 3.8 ms without a trim
and 47 ms with one (trims of 38 to 77 ms), once a burst. The free bytes stay above the
bound after a trim (its pages go back, its chunks stay free), so every later look
trims again until the heap is used: 0.0 to 0.3 ms each over the same heap.

With another C library (musl, macOS) or a glibc older than 2.33 (no ``mallinfo2``)
nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from collections.abc import Callable
from typing import Final

import structlog

from bamboo_session.tasks import cancel_and_wait

log = structlog.get_logger("bamboo_session.server")

RETURN_EVERY: Final = 10.0  # seconds between looks at the heap's free bytes
# Free bytes the heap may keep without a trim: a few frames' worth, what a working
# server frees and takes again within seconds (trimming it would only fault it back).
RETURN_ABOVE: Final = 32 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def _glibc() -> tuple[Callable[[], _MallInfo2], Callable[[int], int]] | None:
    """glibc's ``mallinfo2`` and ``malloc_trim``, or None where there are none."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2, malloc_trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallinfo2.restype, mallinfo2.argtypes = _MallInfo2, []
    malloc_trim.restype, malloc_trim.argtypes = ctypes.c_int, [ctypes.c_size_t]
    return mallinfo2, malloc_trim


def free_in_heap() -> int | None:
    """Bytes the heap holds free (every arena's), or None without glibc."""
    calls = _glibc()
    return None if calls is None else int(calls[0]().fordblks)


def return_free_memory(above: int = RETURN_ABOVE) -> bool:
    """Trims the heap when it holds more than ``above`` bytes free; whether it did.
    Blocking: call it in a thread."""
    calls = _glibc()
    if calls is None:
        return False
    mallinfo2, malloc_trim = calls
    if mallinfo2().fordblks <= above:
        return False
    malloc_trim(0)
    return True


class MemoryReturn:
    """The server's task that returns its freed memory (module docstring)."""

    def __init__(self, every: float = RETURN_EVERY, above: int = RETURN_ABOVE) -> None:
        self.every = every
        self.above = above
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and _glibc() is not None:
            self._task = asyncio.create_task(self._run(), name="bamboo-memory-return")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await asyncio.to_thread(return_free_memory, self.above)
            except Exception:  # never expected: a look at the heap must not end the task
                log.exception("returning freed memory failed")
