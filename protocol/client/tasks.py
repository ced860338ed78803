"""Stopping the tasks the client runs beside its caller (a connection's sender and
keepalive, the link's runner): cancelled and waited for until they have ended
(:func:`bamboo_session.tasks.cancel_and_wait`, which never swallows a cancellation of
the waiting task: close() is one, and one lost so once had the client reconnect for
ever), then what one of them raised, raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bamboo_session.tasks import cancel_and_wait


async def stopped(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` among them is no task) and wait until they have ended;
    raise what one of them raised other than its cancellation, as awaiting it would."""
    running = [task for task in tasks if task is not None]
    await cancel_and_wait(*running)  # raises only the waiting task's own cancellation
    for task in running:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
