"""The park at a restart (``ParksAttached``, persistence/capabilities.py) for the stores
that hold every session's metadata in a :class:`~.index.SessionIndex` (memory, JSONL).

The ids stored ``active`` or ``idle`` are taken a batch at a time from the front of the
index's ids by state (``SessionIndex.first_in``: no sort, no other state looked at, and
no copy of them all), each checked with no await before its move: one deleted, closed,
expired or written since the park began (an attach) is left as it is, and moved behind
the others of its state (``to_back``), so that each step takes ones not looked at yet.
A step looks at no more than its state held as the park began, less what it looked at
before: one that came into the state since, behind them all, is one written since. A
batch of 1,000 is a few milliseconds of the loop. Taking every id at the first step
held the loop 20 to 48 ms more at 100,000 attached (a stop parks 5,000 of them); a
listing of each batch took a selection and a sort of every session left in the state,
up to a second a batch (bench/RESULTS.md). Without secondary indexes (JSONL's
``enable_index`` off) the ids are listed once, from every session's. Times are the
store's clock's (persistence/clock.py), as ``update_session_state`` stamps and judges
expiry by: a park is stamped later than every time the store holds, whatever the wall
clock says after a restart.

In no promised order (the index's sets; SQLite walks ``(created_at, id)``), where the
listing path before the stores parked themselves (6345d73 to 14e2d77) went oldest
``updated_at`` first: that order was its paging, not a promise (sorted so, the
sessions written since the park began came last, where a page could stop, and only
the expired ones stayed in front for the next page to skip), and neither the
contract (``ParksAttached``) nor docs/protocol.md ever named one. No user sees the
order: before the server listens nobody looks; once it listens, an attach to a
session not parked yet spawns its actor, which holds it ``disconnected`` already
(server/status.py ``held_state``) until the attach writes it, a write the park is
fenced off from whenever its turn comes; a read or a listing during the park's
seconds shows some still ``active`` or ``idle``, which ones mattering to no one (no
connection holds any of them). A crash during it leaves the rest to the next start's
park; on JSONL what reached the disk is what the checkpoints wrote, in their own
order (the park's writes are lazy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Final

from bamboo_session.protocol.models import SessionMetadata, SessionState

from .clock import StoreClock
from .index import SessionIndex

LEFT_ATTACHED: Final = (SessionState.ACTIVE, SessionState.IDLE)


def _nothing(_session_id: str) -> None:
    pass


async def park_indexed(
    index: SessionIndex,
    clock: StoreClock,
    since: datetime,
    batch: int,
    moved: Callable[[str], None] = _nothing,
) -> AsyncIterator[int]:
    """Parks what ``index`` holds ``active`` or ``idle``, written at or before ``since``
    (a time of ``clock``: every write after it is stamped later), and not expired,
    ``batch`` at a time; yields how many each batch parked. ``moved``: told each session
    parked (the JSONL store's next checkpoint writes it)."""
    since = _utc(since)
    batch = max(batch, 1)
    for ids in _steps(index, batch):
        now, parked = clock.stamp(), 0  # one time for the batch, as an SQLite commit
        for session_id in ids:
            meta = index.get(session_id)
            if meta is None:
                continue
            if not _to_park(meta, since, now):
                if index.ordered_by_state and meta.state in LEFT_ATTACHED:
                    index.to_back(session_id)  # looked at: behind those not yet
                continue
            index.set_state(session_id, SessionState.DISCONNECTED)
            meta.updated_at = now
            moved(session_id)
            parked += 1
        yield parked


def _steps(index: SessionIndex, batch: int) -> Iterator[list[str]]:
    """The ids each step looks at (module docstring), taken as the step begins."""
    if not index.ordered_by_state:
        candidates = index.ids_in(LEFT_ATTACHED)
        for start in range(0, len(candidates), batch):
            yield candidates[start : start + batch]
        return
    for state in LEFT_ATTACHED:
        left = index.count_in(state)  # as its turn begins: any that come later, behind
        while left > 0 and (ids := index.first_in(state, min(batch, left))):
            left -= len(ids)
            yield ids


def attached_left_indexed(index: SessionIndex, clock: StoreClock, since: datetime) -> bool:
    """Whether :func:`park_indexed` ``(index, clock, since, …)`` would park a session now
    (``ParksAttached.attached_left``): the first one found answers."""
    since, now = _utc(since), clock.now()
    for session_id in index.each_in(LEFT_ATTACHED):  # (no list: the first may answer)
        meta = index.get(session_id)
        if meta is not None and _to_park(meta, since, now):
            return True
    return False


def _to_park(meta: SessionMetadata, since: datetime, now: datetime) -> bool:
    """Left attached, written at or before ``since``, not expired at ``now``."""
    return meta.state in LEFT_ATTACHED and meta.updated_at <= since and not meta.is_expired(now)


def _utc(when: datetime) -> datetime:
    # Stored times are UTC, as a listing's bounds read them.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
