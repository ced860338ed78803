"""Running the JSONL storage's work off the event loop: blocking file work in worker
threads (an ``OSError`` becomes a :class:`StorageError`), file work that must finish
even when its caller is cancelled, and tracked background tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ..base import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_io(function: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a thread; an OSError becomes a StorageError."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as exc:
        raise StorageError(f"storage I/O failed: {exc}") from exc


async def to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end even if the caller is cancelled meanwhile (then the
    cancellation is raised after it ends): for file work that must not stop halfway."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
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
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def wait(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("storage background task failed: %r", exc, exc_info=exc)
