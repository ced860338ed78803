"""The Redis store's append: one run of ``append.lua`` (seqs, the key window, the cap on
a session's stored bytes, the metadata and the pub/sub notice, atomically), the
hand-off of what it stored to this instance's own subscriptions at once, and whose a
key of the wrong type was when the script met one (the session's: ``SessionLogFailed``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.micros import from_micros
from bamboo_session.protocol.models import StoredEvent

from ..base import KEY_WINDOW, Appended, AppendItem, SessionLogFailed
from ..events import completed_event
from .layout import flags_of
from .scripts import HistoryLost, KeyOfWrongType, optional_arg

if TYPE_CHECKING:
    from .storage import RedisStorage

# What the append writes to each of the session's own keys (layout.session_keys: meta,
# log, keys, msgs), as Redis's TYPE names it; a key not there yet is "none".
OWN_KEY_TYPES: Final = ("hash", "stream", "zset", "list")


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
    except KeyOfWrongType as exc:
        if await own_key_written_over(storage, keys):
            raise SessionLogFailed(str(exc)) from exc
        raise  # an index every session's appends write: the store's
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


async def own_key_written_over(storage: RedisStorage, keys: Sequence[str]) -> bool:
    """Whether one of the session's own ``keys`` holds another type than the append
    writes to it (something else wrote over it). Asked only after a WRONGTYPE: a
    command of its own, so the append's script spends nothing on it."""
    found = await storage.redis.read_many([("TYPE", key) for key in keys])
    kinds = [kind.decode() if isinstance(kind, bytes) else kind for kind in found]
    return any(
        kind not in ("none", expected) for kind, expected in zip(kinds, OWN_KEY_TYPES, strict=True)
    )
