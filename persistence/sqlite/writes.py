"""What the SQLite store writes, as operations that run inside a group commit.

Each operation is a function ``(batch, ...)`` run on the writer thread inside the
batch's one transaction (``persistence/sqlite/writer.py``). The rule that keeps a batch
sound: an operation checks everything that can refuse it (SessionNotFound,
SessionClosed, SessionExpired, InvalidTransition, ValueError) *before* it changes
anything, so a refused operation leaves nothing behind and the others in its batch go
on. Any other failure (an SQLite error: disk full, I/O error) rolls the whole batch back.

The batch itself (:class:`~.batch.Batch`: its transaction, the rows it touched, their
write at its end) is batch.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import msgspec

from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    MessageEvent,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from ..base import (
    KEY_WINDOW,
    Appended,
    AppendItem,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StorageFull,
)
from ..clock import made_at
from ..events import check_room, check_user_room, completed_event, stored_size
from ..state_condition import check_condition, updated_since
from .batch import Batch
from .rows import Row
from .schema import SESSION_COLUMNS, encode_extra, row_of, time_text

_FINAL_CLOSED: Final = SessionState.CLOSED.value
_EXPIRED: Final = SessionState.EXPIRED.value
# Expired sessions one write of a cleanup removes: the writes of live sessions wait
# behind one such step at most, not behind the whole round.
CLEANUP_STEP: Final = 256


# -- operations -----------------------------------------------------------------------


# An item to append as the event loop prepares it, so that the writer thread has little
# left to do between two commits: (completed event, key, its JSON, is it a message).
Prepared = tuple[AnyAgentEvent, str | None, bytes, bool]


def prepare(items: Sequence[AppendItem]) -> list[Prepared]:
    prepared: list[Prepared] = []
    for event, key in items:
        event = completed_event(event)
        prepared.append((event, key, encode_event(event), isinstance(event, MessageEvent)))
    return prepared


def create(
    batch: Batch,
    meta: SessionMetadata,
    messages: Sequence[Prepared],
    max_sessions: int | None,
    replace_expired: bool = False,
    made_now: bool = False,
) -> str | None:
    """Insert the new session (``made_now``: at this transaction's time, clock.made_at);
    with ``replace_expired``, in place of an expired one of the same id, removed in the
    same transaction. The epoch of the one it replaced, or None."""
    session_id = meta.id
    old = batch.row(session_id)
    if old is not None:
        if not (replace_expired and old.is_expired(batch.now_text)):
            raise SessionExists(f"session {session_id!r} already exists")
        _remove(batch, session_id)  # after every check: a refusal leaves nothing done
    elif max_sessions is not None and batch.sessions() >= max_sessions:
        raise StorageFull(f"the storage holds its maximum of {max_sessions} sessions")
    if made_now:
        made_at(meta, batch.now)
    values = row_of(meta)
    batch.db.execute(
        f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
        values,
    )
    row = batch.rows[session_id] = Row(list(values))
    batch.cache.put(session_id, row)
    batch.session_delta += 1
    if messages:
        append(batch, session_id, messages)
    # The caller ends the subscriptions of the replaced epoch only: one made between
    # this commit and its acknowledgement follows the new session, and stays.
    return None if old is None else old.epoch


def append(
    batch: Batch,
    session_id: str,
    items: Sequence[Prepared],
    epoch: str | None = None,
    cap: int | None = None,
    user_cap: int | None = None,
) -> tuple[list[Appended], list[StoredEvent]]:
    """Append fresh items with the next seqs; a key accepted within the window (or
    earlier in ``items``) makes a duplicate of its first seq. With ``epoch``, only to
    the log of that epoch: a session created again under the id is SessionNotFound.
    Fresh items that would take the session's stored bytes past ``cap``: SessionFull,
    and its user's past ``user_cap``: UserFull, nothing appended (checked before
    anything changes, as every refusal is)."""
    row = batch.existing(session_id)
    if epoch is not None and row.epoch != epoch:
        raise SessionNotFound(f"session {session_id!r} not found")
    if row.state == _FINAL_CLOSED:
        raise SessionClosed(f"session {session_id!r} is closed")
    if row.is_expired(batch.now_text):
        raise SessionExpired(f"session {session_id!r} has expired")
    last_seq = row.last_seq
    results: list[Appended] = []
    fresh: list[tuple[int, Prepared]] = []
    keys: dict[str, int] = {}  # fresh keys of these items: batch.keys once they are in
    adding = 0
    for item in items:
        key = item[1]
        next_seq = last_seq + len(fresh) + 1
        if key is not None:
            seen = keys.get(key)
            if seen is None:
                seen = batch.seq_of_key(session_id, key)
            if seen is not None and next_seq - seen <= KEY_WINDOW:
                results.append(Appended(seen, duplicate=True))
                continue
            keys[key] = next_seq
        adding += stored_size(item[2], key)
        fresh.append((next_seq, item))
        results.append(Appended(next_seq))
    if not fresh:
        return results, []
    check_room(row.stored_bytes, adding, cap)
    user = row.user_id
    if user_cap is not None and user is not None:
        check_user_room(user, batch.user_bytes(user), adding, user_cap)
    now, now_text = batch.now, batch.now_text
    message_count = row.message_count
    stored: list[StoredEvent] = []
    inserts = batch.inserts
    for seq, (event, key, data, is_message) in fresh:
        index = None
        if is_message:
            index = message_count
            message_count += 1
        stored.append(StoredEvent(seq, now, event, key, msgspec.Raw(data)))
        inserts.append((session_id, seq, now_text, key, index, data))
    for key, seq in keys.items():
        batch.keys[session_id, key] = seq
    row.advance(stored[-1].seq, message_count, row.stored_bytes + adding)
    batch.cache.grow_user(user, adding)
    row.touch(now_text, batch.expiry(row.ttl))
    return results, stored


def import_events(batch: Batch, session_id: str, events: Sequence[StoredEvent]) -> None:
    row = batch.existing(session_id)
    expected = row.last_seq + 1
    for event in events:
        if event.seq != expected:
            raise ValueError(f"import of {session_id!r}: seq {event.seq}, not {expected}")
        expected += 1
    message_count, stored_bytes = row.message_count, row.stored_bytes
    for event in events:
        index = None
        if isinstance(event.event, MessageEvent):
            index = message_count
            message_count += 1
        if event.key is not None:
            batch.keys[session_id, event.key] = event.seq
        ts = time_text(event.ts)
        data = bytes(event.event_json)
        stored_bytes += stored_size(data, event.key)
        batch.inserts.append((session_id, event.seq, ts, event.key, index, data))
    if events:
        batch.cache.grow_user(row.user_id, stored_bytes - row.stored_bytes)
        row.advance(events[-1].seq, message_count, stored_bytes)


def import_metadata(batch: Batch, meta: SessionMetadata) -> None:
    row = batch.existing(meta.id)
    row.set(
        state=meta.state.value,
        updated_at=time_text(meta.updated_at),
        last_activity_at=time_text(meta.last_activity_at),
        expires_at=None if meta.expires_at is None else time_text(meta.expires_at),
        ttl=meta.ttl,
        extra=encode_extra(meta.extra),
    )


def set_state(
    batch: Batch,
    session_id: str,
    state: SessionState,
    epoch: str | None = None,
    unless_updated_since: datetime | None = None,
) -> SessionMetadata:
    """With ``epoch``, only the session of that epoch (else SessionNotFound); with
    ``unless_updated_since``, only one not written since (else left as it is: this
    batch's writes of it, activity included, are in its row already)."""
    check_condition(state, unless_updated_since)
    row = batch.existing(session_id, epoch)
    SessionState(row.state).check_transition(state)
    if state != SessionState.EXPIRED and row.is_expired(batch.now_text):
        # A state change does not revive a session.
        raise SessionExpired(f"session {session_id!r} has expired")
    if updated_since(datetime.fromisoformat(row.updated_at), unless_updated_since):
        return row.metadata()
    row.set(state=state.value, updated_at=batch.now_text)
    return row.metadata()


def touch(batch: Batch, session_id: str, epoch: str | None = None) -> None:
    """With ``epoch``, only the session of that epoch (else SessionNotFound)."""
    row = batch.live(session_id, epoch)
    if row.state != _FINAL_CLOSED:  # a closed session has no activity: its expiry stays
        row.touch(batch.now_text, batch.expiry(row.ttl))


def delete(batch: Batch, session_id: str) -> None:
    batch.existing(session_id)
    _remove(batch, session_id)


def cleanup(batch: Batch, limit: int) -> list[str]:
    """Remove up to ``limit`` expired sessions; their ids (fewer than ``limit``: no
    other expired session is left)."""
    batch.flush()  # the query below must see this batch's activity
    expired = [
        session_id
        for (session_id,) in batch.db.execute(
            "SELECT id FROM sessions WHERE state = ? UNION "
            "SELECT id FROM sessions WHERE expires_at <= ? LIMIT ?",
            (_EXPIRED, batch.now_text, limit),
        ).fetchall()
    ]
    for session_id in expired:
        _remove(batch, session_id)
    return expired


def _remove(batch: Batch, session_id: str) -> None:
    batch.flush()  # events of the session queued in this batch go too
    row = batch.row(session_id)
    if row is not None:  # its bytes are its user's no more
        batch.cache.grow_user(row.user_id, -row.stored_bytes)
    batch.keys = {key: seq for key, seq in batch.keys.items() if key[0] != session_id}
    batch.db.execute("DELETE FROM events WHERE session_id = ?", (session_id,))
    batch.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    batch.rows[session_id] = None
    batch.cache.rows.pop(session_id, None)
    batch.session_delta -= 1
