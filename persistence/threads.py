"""ThreadJobs: blocking calls of a store on a pool of threads, never more of them given
to the pool than it has threads.

An asyncio executor takes any number of jobs and queues those its threads cannot run
yet; cancelling the task that awaits a job ends the task at once, while the job, once
started, runs on in its thread (a thread cannot be stopped). On a store that stops
answering (a disk that stalls, a lock another process holds), every read the server
gave up on would leave a job in the queue, without bound, and nothing would count it.

Here a job holds one of ``threads`` slots from before it is submitted until it has
ended in its thread: the pool's queue stays empty (a submitted job always has a thread
to itself), and work beyond the threads waits for a slot on the event loop, where a
caller that gives up leaves nothing behind. A caller cancelled once its job was
submitted stays until the job ends, then raises the cancellation: whoever counts the
calls it gave up on (the server's abandoned reads, server/pages.py) counts that one
until it really ends. A job's end comes back to the loop in one call, which frees its
slot and answers its caller, as ``asyncio.to_thread`` costs. A job the pool refuses
(shut down, or no thread could be started: "can't start new thread") never runs,
although the pool keeps it queued: its caller, told so, never sees it done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from .base import StorageError

T = TypeVar("T")

# As many threads as asyncio's default executor has (Python 3.8 on).
DEFAULT_THREADS: Final = min(32, (os.cpu_count() or 1) + 4)


class ThreadJobs:
    """At most ``threads`` blocking calls at once, each on a thread of its own pool."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._slots = asyncio.Semaphore(threads)
        self.unfinished = 0  # jobs submitted that have not ended in their thread yet

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a thread, with this task's context variables."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        claim = threading.Lock()  # taken by the job's thread as it starts, or by a refusal
        try:
            self._pool.submit(self._job, loop, answer, context, function, args, claim)
        except RuntimeError as exc:
            # Shut down, or no thread could be started for it: then the pool has queued
            # the job all the same (ThreadPoolExecutor.submit puts it in its queue before
            # it starts a thread), and a thread that frees up would run it. Refused, it
            # never runs: its caller, told it failed, never sees it done. Unless a
            # thread took it first: then it runs, and its caller gets its outcome.
            if claim.acquire(blocking=False):
                self._slots.release()
                raise StorageError(f"the store takes no more work: {exc}") from None
        self.unfinished += 1
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The job has a thread (it holds a slot): wait for its end, whatever comes.
            await _outlast(answer)
            raise

    def _job(
        self,
        loop: asyncio.AbstractEventLoop,
        answer: asyncio.Future[Any],
        context: contextvars.Context,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        claim: threading.Lock,
    ) -> None:
        """In a pool thread: the call, then one call back to the loop, which frees the
        slot and answers (one per job, whether its caller still waits or not); nothing
        for a job refused (``run``)."""
        if not claim.acquire(blocking=False):
            return
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(function, *args)
        except StopIteration as exc:  # a future refuses it (it would end a coroutine)
            error = RuntimeError(f"{function!r} raised StopIteration")
            error.__cause__ = exc
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._ended, answer, result, error)

    def _ended(self, answer: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self.unfinished -= 1
        self._slots.release()
        if error is None:
            answer.set_result(result)
        else:
            answer.set_exception(error)

    def shutdown(self, wait: bool) -> None:
        """No more jobs; with ``wait``, returns once those under way have ended."""
        self._pool.shutdown(wait=wait)

    async def ended_within(self, seconds: float) -> bool:
        """After :meth:`shutdown`: waits up to ``seconds`` for the jobs under way to end
        (each slot taken back, and kept); whether they all did."""
        try:
            async with asyncio.timeout(seconds):  # not wait_for: 3.11's drops a cancellation
                for _ in range(self.threads):
                    await self._slots.acquire()
        except TimeoutError:
            return False
        return True


async def _outlast(answer: asyncio.Future[Any]) -> None:
    """Wait until ``answer`` is done, through any further cancellation."""
    while not answer.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((answer,))
    answer.exception()  # the caller left: its failure is nobody's to report
