"""The park at a restart (``ParksAttached``, persistence/capabilities.py) on SQLite: each
step is one operation of the group-commit writer (``writer.py``), which parks the next
sessions of one state in the order of the ``sessions_by_state`` index, from where the
step before ended (so the sessions a step leaves, expired or written since, are not
read again), checking each against its row as the writer holds it with the move."""

from __future__ import annotations

from typing import Final

from bamboo_session.protocol.models import SessionState

from .writes import Batch

LEFT_ATTACHED: Final = (SessionState.ACTIVE.value, SessionState.IDLE.value)
_PARKED: Final = SessionState.DISCONNECTED.value
_NEXT: Final = (
    "SELECT created_at, id FROM sessions WHERE state = ? AND (created_at, id) > (?, ?) "
    "ORDER BY created_at, id LIMIT ?"
)

Cursor = tuple[str, str]  # (created_at, id) of the last session a step looked at
START: Final[Cursor] = ("", "")


def park(
    batch: Batch, state: str, after: Cursor, since: str, limit: int
) -> tuple[int, Cursor | None]:
    """Parks the sessions of ``state`` past ``after`` (``limit`` of them looked at) whose
    ``updated_at`` is before ``since`` and that have not expired: how many, and where the
    next step starts (None: none left of that state)."""
    found = batch.db.execute(_NEXT, (state, *after, limit)).fetchall()
    parked = 0
    for _created_at, session_id in found:
        row = batch.row(session_id)  # this batch's writes of it included
        if (
            row is None
            or row.state not in LEFT_ATTACHED
            or row.updated_at >= since
            or row.is_expired(batch.now_text)
        ):
            continue
        row.set(state=_PARKED, updated_at=batch.now_text)
        parked += 1
    return parked, (found[-1][0], found[-1][1]) if len(found) == limit else None
