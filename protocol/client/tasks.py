"""Stopping the tasks the client runs beside its caller (a connection's sender and
keepalive, the link's runner): cancelled, and waited for until they have ended.

Not ``with contextlib.suppress(CancelledError): await task``: that swallows a
cancellation of the waiting task too, which close() is. A close() that came while a
dropped connection's tasks were being stopped was lost so, and the client reconnected
after it (for ever, with the server out of reach, close() waiting on it).
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stopped(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` among them is no task) and wait until they have ended;
    raise what one of them raised other than its cancellation, as awaiting it would."""
    running = [task for task in tasks if task is not None]
    if not running:
        return
    for task in running:
        task.cancel()
    await asyncio.wait(running)  # raises only the waiting task's own cancellation
    for task in running:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
