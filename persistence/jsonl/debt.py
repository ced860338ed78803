"""What the log writer still owes the disk (``DiskDebt``): the appends it took and has
not answered, in the group commit under way and in its queue, and the step that commit
waits on, for a stop that cannot end to name (server/stop_bounds.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..capabilities import DiskDebt
from .batch import Batch, QueuedControl
from .syncer import Syncer

Step = Syncer | Callable[..., object] | None  # the helper, the I/O thread's call, the loop


def debt_of(
    in_flight: Sequence[Batch | QueuedControl],
    queue: Sequence[Batch | QueuedControl],
    waiting_on: Step,
    since: float,
) -> DiskDebt:
    """The debt of a writer whose commit under way (``in_flight``, begun at ``since``,
    ``time.monotonic``) waits on ``waiting_on``. An append whose caller left (its future
    cancelled) is still owed: its lines are the disk's to finish."""
    appends = [
        item
        for item in (*in_flight, *queue)
        if isinstance(item, Batch)
        and item.future is not None
        and (not item.future.done() or item.future.cancelled())
    ]
    if not appends:
        return DiskDebt()
    now = time.monotonic()
    return DiskDebt(
        len(appends),
        sum(len(item.events) for item in appends),
        sum(len(item.data) for item in appends),
        step_name(waiting_on) if in_flight else "the writer's queue",
        now - (since if in_flight else now),
    )


def step_name(waiting_on: Step) -> str:
    """The step a commit waits on, in an operator's words."""
    if isinstance(waiting_on, Syncer):
        return f"the WAL's fdatasync by the sync helper (pid {waiting_on.pid})"
    if waiting_on is not None:
        return f"the writer's I/O thread ({getattr(waiting_on, '__name__', 'a call')})"
    return "the writer's task"
