"""The Redis store's reads of one session: its event log (``read.lua``) and its
message history with its metadata (``history.lua``), each in one script, so that the
epoch a caller holds is checked, against the generation's token too, with the read
it guards (a session replaced under its id, or a Redis restart that changed every
epoch, is never read as the log the caller asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import Message, MessageEvent, SessionMetadata, StoredEvent

from ..base import HistoryPage, SessionNotFound
from ..events import within_bytes
from .layout import event_from_entry
from .scripts import HistoryLost

if TYPE_CHECKING:
    from .storage import RedisStorage

_message_of = msgspec.json.Decoder(MessageEvent)


async def read_events(
    storage: RedisStorage,
    session_id: str,
    after_seq: int,
    limit: int | None,
    max_bytes: int | None = None,
    epoch: str | None = None,
) -> list[StoredEvent]:
    """The contract's ``read_events`` of a checked ``session_id``; with ``epoch``,
    SessionNotFound if the session's log is of another epoch (a session that replaced
    it under its id), in the same script."""
    count: int | str = "" if limit is None else max(limit, 0)
    layout = storage.layout
    keys = [layout.meta(session_id), layout.log(session_id)]
    if count == 0:
        found = await storage.epoch(session_id)  # SessionNotFound still applies
        if epoch is not None and found != epoch:
            raise SessionNotFound(f"session {session_id!r} not found")
        return []
    # The epoch as served: the script checks it against the generation's too. The
    # budget makes it read about the page it keeps, not up to ``limit`` events.
    budget = "" if max_bytes is None else max(max_bytes, 0)
    args = [str(max(after_seq, 0) + 1), count, epoch or "", storage.generation.key, budget]
    try:
        entries = await storage.redis.run("read", keys, args)
    except HistoryLost:
        await storage.generation.check(refused=True)
        raise
    events = [event_from_entry(entry) for entry in entries]
    return events if max_bytes is None else within_bytes(events, max_bytes)


def script_budget(max_bytes: int | None) -> str | int:
    """A byte budget as the scripts take it (``''``: none)."""
    return "" if max_bytes is None else max(max_bytes, 0)


async def history_page(
    storage: RedisStorage, session_id: str, args: Sequence[str | int], epoch: str | None
) -> HistoryPage:
    """A page of history (``history.lua`` with ``["page", limit, before, budget]`` or
    ``["from", start, limit, budget]``); with ``epoch``, SessionNotFound if the
    session's, read with the page in one script, is another."""
    meta, start, messages = await read_history(storage, session_id, args)
    if epoch is not None and meta.epoch != epoch:
        raise SessionNotFound(f"session {session_id!r} not found")
    return HistoryPage(messages, start, start > 0)


async def read_history(
    storage: RedisStorage, session_id: str, args: Sequence[str | int]
) -> tuple[SessionMetadata, int, list[Message]]:
    """``history.lua`` with ``args`` (``["all"]``, or a page's: :func:`history_page`):
    the session's metadata as served, the index of the first message, the messages."""
    session_id = check_session_id(session_id)
    meta, log, _, msgs, _ = storage.layout.session_keys(session_id)
    reply = await storage.redis.run("history", [meta, msgs, log], args)
    messages = [_message_of.decode(data).message for data in reply[2:]]
    return storage.served_metadata(reply[0]), int(reply[1]), messages
