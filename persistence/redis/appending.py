"""The Redis store's append: one run of ``append.lua`` (seqs, the key window, the cap on
a session's stored bytes, the metadata and the pub/sub notice, atomically), and the
hand-off of what it stored to this instance's own subscriptions at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import StoredEvent

from ..base import KEY_WINDOW, Appended, AppendItem
from ..events import completed_event
from .layout import flags_of, from_micros
from .scripts import HistoryLost, optional_arg

if TYPE_CHECKING:
    from .storage import RedisStorage


async def append_events(
    storage: RedisStorage,
    session_id: str,
    items: Sequence[AppendItem],
    epoch: str | None,
    cap: int | None,
    user_cap: int | None = None,
) -> list[Appended]:
    """The contract's ``append_events``; ``cap``: the session's stored bytes at most
    (None: no cap), ``user_cap``: its user's (None: no cap), checked by the script
    before it writes anything (SessionFull, UserFull)."""
    storage.require_writable()
    session_id = check_session_id(session_id)
    layout = storage.layout
    events = [completed_event(event) for event, _ in items]
    encoded = [encode_event(event) for event in events]
    channel = layout.channel(session_id)
    args: list[str | bytes | int] = [
        session_id,
        layout.index,
        KEY_WINDOW,
        storage.redis.publish,
        channel,
        epoch or "",  # as served: checked against the session's, and the generation
        optional_arg(cap),
        optional_arg(user_cap),
    ]
    for (_, key), event, data in zip(items, events, encoded, strict=True):
        args += [flags_of(key, event), "" if key is None else key, data]
    keys = layout.session_keys(session_id)[:4]
    try:
        reply = await storage.redis.write("append", keys, args, deferred=True, channel=channel)
    except HistoryLost:  # an earlier generation's epoch: this instance has not heard
        await storage.generation.check(refused=True)
        raise
    results = [Appended(seq) if seq > 0 else Appended(-seq, True) for seq in reply[2:]]
    live = storage.live
    if live.feed.has_subscribers(session_id):
        ts = from_micros(int(reply[0]))
        every = zip(results, items, events, encoded, strict=True)
        fresh = [
            StoredEvent(result.seq, ts, event, key, msgspec.Raw(data))
            for result, (_, key), event, data in every
            if not result.duplicate
        ]
        live.publish(session_id, fresh, epoch)
    return results
