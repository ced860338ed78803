"""A deadline on the awaits of a block, as ``asyncio.timeout_at``, on a loop given.

``asyncio.timeout`` finds the running loop three times (``timeout``, the task in
``__aenter__``, the timer in ``reschedule``), and on Python 3.11 each look-up is a
``getpid`` syscall (the running loop is checked against a fork). A connection's
handshake and ``hello`` each had one: six syscalls per connect. :class:`Deadline` takes
the loop its caller already holds, and does what ``asyncio.Timeout`` does in 3.11
otherwise: the task cancelled at the deadline, that cancellation (and only it) raised
out of the block as ``TimeoutError``, any other cancellation let through.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``async with Deadline(loop, when):`` raises TimeoutError out of the block if it
    is still running at loop time ``when``. One use; on the running task of ``loop``."""

    __slots__ = ("_cancelling", "_expired", "_loop", "_task", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._when = when
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a Deadline is entered inside a task")
        self._task = task
        # Cancellations asked for before the block: not ours to turn into a timeout.
        self._cancelling = task.cancelling()
        self._timer = self._loop.call_at(self._when, self._on_deadline)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expired:
            assert self._task is not None
            # Ours alone, if no other cancellation was asked for meanwhile.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def expire(self) -> None:
        """The deadline brought forward to now, if the block is still running: what it
        does has become pointless (the peer it answers is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._on_deadline()

    def _on_deadline(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self._expired = True
        self._timer = None
