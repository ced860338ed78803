"""Running the JSONL storage's work off the event loop: blocking file work on the
store's worker threads (:class:`FileJobs`: an ``OSError`` becomes a
:class:`StorageError`), the log writer's own I/O thread, file work that must finish
even when its caller is cancelled, and tracked background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from bamboo_session.tasks import detached

from ..base import StorageError
from ..threads import DEFAULT_THREADS, ThreadJobs

log = logging.getLogger(__name__)

T = TypeVar("T")


class FileJobs(ThreadJobs):
    """The store's threads for blocking file work: its reads, checkpoints, deletions
    and key scans, counted together (persistence/threads.py), so that no job of a disk
    that stalls waits in a queue uncounted. As many as asyncio's default executor has,
    which did this work before."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        super().__init__(threads, "bamboo-jsonl-io")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file work in a thread; an OSError becomes a StorageError."""
        try:
            return await super().run(function, *args)
        except OSError as exc:
            raise StorageError(f"storage I/O failed: {exc}") from exc


class IoThread:
    """One thread that runs blocking calls one at a time, in the order given, each
    answered through an asyncio future: the log writer's group commits. A round trip
    costs about a third of a ``ThreadPoolExecutor``'s (10 against 30 microseconds of
    CPU here: a C ``SimpleQueue`` and one ``call_soon_threadsafe``, no
    ``concurrent.futures.Future`` chained to an asyncio one), and the writer pays one
    per group commit."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def run(
        self, loop: asyncio.AbstractEventLoop, function: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        if not self._thread.is_alive():
            self._thread.start()  # at the first call: a store that never writes has none
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            _run(*call)
            # Not kept while the next call is awaited: its arguments (a group commit, its
            # lines and events) would stay for as long as the writer is idle.
            del call


def _run(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    function: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    try:
        result = function(*args)
    except BaseException as exc:  # handed to the caller, whatever it is
        _answer(loop, _set_exception, future, exc)
    else:
        _answer(loop, _set_result, future, result)


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _answer(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[asyncio.Future[Any], Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle, future, value)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def to_completion(work: Awaitable[T]) -> T:
    """Run ``work`` (a coroutine, or a future such as an ``IoThread`` call) to its end
    even if the caller is cancelled meanwhile (then the cancellation is raised after it
    ends): for file work that must not stop halfway. However often it is cancelled: a
    second cancellation that let the caller go on would have it act on an outcome not
    known yet (the log writer acknowledging a commit whose sync still runs)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):  # raised once, below
                await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("storage operation failed after its caller left: %r", task.exception())
        raise


async def every(seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``work`` every ``seconds``, for ever; a failure is logged, and the next
    round comes all the same."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)


class BackgroundTasks:
    """Tasks the storage starts and nobody awaits: kept until done, failures logged."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = detached(coroutine, "bamboo-jsonl-background")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def wait(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("storage background task failed: %r", exc, exc_info=exc)
