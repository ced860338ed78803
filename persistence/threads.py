"""ThreadJobs: blocking calls of a store on a pool of threads, never more of them given
to the pool than it has threads.

An asyncio executor takes any number of jobs and queues those its threads cannot run
yet; cancelling the task that awaits a job ends the task at once, while the job, once
started, runs on in its thread (a thread cannot be stopped). On a store that stops
answering (a disk that stalls, a lock another process holds), every read the server
gave up on would leave a job in the queue, without bound, and nothing would count it.

Here a job holds one of ``threads`` slots from before it is submitted until it has
ended in its thread (or was cancelled before it started): the pool's queue stays empty,
and work beyond the threads waits for a slot on the event loop, where a caller that
gives up leaves nothing behind. A caller cancelled while its job runs stays until the
job ends, then raises the cancellation: whoever counts the calls it gave up on (the
server's abandoned reads, server/pages.py) counts that one until it really ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
        try:
            job = self._pool.submit(contextvars.copy_context().run, function, *args)
        except RuntimeError:  # shut down: nothing was submitted
            self._slots.release()
            raise StorageError("the store is closed") from None
        self.unfinished += 1
        # Called once: in the job's thread when it ends, or here when cancelled unstarted.
        job.add_done_callback(functools.partial(self._ended, loop))
        answer = asyncio.wrap_future(job, loop=loop)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            if not job.cancel():  # it started: wait for its end, whatever comes
                await _outlast(answer)
            raise

    def _ended(self, loop: asyncio.AbstractEventLoop, _job: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self.unfinished -= 1
        self._slots.release()

    def shutdown(self, wait: bool) -> None:
        """No more jobs; with ``wait``, returns once those under way have ended."""
        self._pool.shutdown(wait=wait)


async def _outlast(answer: asyncio.Future[Any]) -> None:
    """Wait until ``answer`` is done, through any further cancellation."""
    while not answer.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((answer,))
    if not answer.cancelled():
        answer.exception()  # the caller left: its failure is nobody's to report
