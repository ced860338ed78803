"""Stopping tasks: each cancelled, and waited for until it has ended, for every layer
(a store's background loops, the server's heartbeats, the client's sender and keepalive).

One cancellation is not always enough. On Python 3.11 ``asyncio.wait_for`` returns the
inner result and drops a cancellation that arrives just as the inner awaitable finishes
(fixed in 3.12), and redis-py sends every command through it when ``socket_timeout`` is
set, as our Redis store's is. The store's connections keep those cancellations
(persistence/redis/cancellation.py: before, a loop of Redis reads outlived about one
cancellation in five, tests/test_tasks_stopped.py, and a watch of a session about one
in thirty, tests/test_redis_watch_cancelled.py); any other code that waits through a
``wait_for`` of 3.11, or catches a cancellation and goes on, may still drop one. So a
task still running a while after its cancellation is cancelled again.

Not ``with contextlib.suppress(CancelledError): await task`` either: that swallows a
cancellation of the waiting task too.

The same drop lost an ``asyncio.timeout`` deadline: its timer cancels the task, and if
that landed in redis-py's send the body ran on with no deadline left (a block of 50
HMGETs on the store's client ran past a 0.5-3 ms deadline in 439-495 of 500 tries; in 2
of 500 without ``socket_timeout``). The store's connections keep that one too; a
deadline around store calls is still waited for in a task of its own
(``asyncio.wait(..., timeout=)``, server/pages.py ``lookup``), which no drop can lose.

A stopped task's cleanup (what it awaits on its cancellation) is cancelled too if it
takes longer than ``again_after``: keep it short. A cleanup it shields is then cut
loose, not waited for: ``cancel_and_wait`` returns while it runs.

A store's own tasks (its writer, its background checkpoints, a load or a batch that
serves every caller) start in a context of their own (:func:`detached`), not in the
context of whichever caller made them start: a task inherits its creator's context
variables, and with them structlog's bound fields, so a store task started during a
connection's append or attach logged, for as long as it ran, as that connection's.

It lives in the root package beside :mod:`bamboo_session.wakeup`, for the same reason:
every layer uses it, and none should import another for it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

AGAIN_AFTER = 1.0  # seconds a cancelled task has to end before it is cancelled again


async def cancel_and_wait(
    *tasks: asyncio.Future[Any] | None, again_after: float = AGAIN_AFTER
) -> None:
    """Cancel ``tasks`` (``None`` among them is no task) and wait until every one has
    ended, cancelling again each that is still running ``again_after`` seconds after its
    last cancellation. What a task raised is left on it, for its owner to retrieve.
    Only the waiting task's own cancellation is raised."""
    running = {task for task in tasks if task is not None}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=again_after)


async def ended_within(future: asyncio.Future[Any], seconds: float) -> bool:
    """Waits ``seconds`` at most for ``future``: whether it ended. Past that it is left
    as it is, for the caller to cancel or leave running (a store's call on a disk that
    hangs may never end). A cancellation of the waiting task cancels ``future`` too, as
    awaiting it would have."""
    try:
        done, _ = await asyncio.wait({future}, timeout=seconds)
    except asyncio.CancelledError:
        future.cancel()
        raise
    return bool(done)


def detached(coroutine: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """``coroutine`` in a task of its own context (empty): none of its creator's
    context variables, so none of the log fields bound where it was started."""
    loop = asyncio.get_running_loop()
    return loop.create_task(coroutine, name=name, context=contextvars.Context())
