"""What ``bamboo-session migrate`` needs of a Redis store beyond the contract
(``SessionImport``): events with their own seq, ts and key, and a session's final
metadata, each written by one script (``import.lua``, ``import_meta.lua``). Both tell
every instance what they change, as an append and a close do: ``migrate`` may write
into a store that instances serve (nothing there holds it off, unlike a file store's
lock), and their viewers are then told at once."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.micros import to_micros
from bamboo_session.protocol.models import SessionMetadata, StoredEvent

from ..base import KEY_WINDOW
from ..feed import CLOSED
from ..importing import check_importable
from .layout import CLOSED_NOTICE, flags_of
from .scripts import removed_epoch

if TYPE_CHECKING:
    from .storage import RedisStorage


async def import_events(
    storage: RedisStorage, session_id: str, events: Sequence[StoredEvent]
) -> None:
    """Appends ``events`` as they are; the store checks that the first follows the
    session's last seq (ValueError if not)."""
    storage.require_writable()
    check_importable(session_id, events)
    for before, after in itertools.pairwise(events):
        if after.seq != before.seq + 1:
            raise ValueError(f"import of {session_id!r}: seq {after.seq} after {before.seq}")
    layout = storage.layout
    args: list[str | bytes | int] = [
        session_id,
        layout.index,
        KEY_WINDOW,
        storage.redis.publish,
        layout.channel(session_id),
    ]
    for event in events:
        key = event.key
        # Whether the event is keyed is its 'k' flag: a key "" goes as itself, as in append.
        args += [event.seq, to_micros(event.ts), flags_of(key, event.event)]
        args.append("" if key is None else key)
        args.append(bytes(event.event_json))
    keys = layout.session_keys(session_id)[:4]
    # deferred: with wait_replicas the batch is published after the WAIT, as an
    # append's, so that the session's subscriptions on every instance get it.
    await storage.redis.write(
        "import", keys, args, deferred=True, channel=layout.channel(session_id)
    )


async def import_metadata(storage: RedisStorage, metadata: SessionMetadata) -> None:
    """Sets state, times, ttl and extra as given, and moves the index entries; a move to
    closed ends the session's subscriptions on every instance, this one's too."""
    storage.require_writable()
    session_id = check_session_id(metadata.id)
    channel = storage.layout.channel(session_id)
    expires = "" if metadata.expires_at is None else to_micros(metadata.expires_at)
    ttl = "" if metadata.ttl is None else metadata.ttl
    args = [
        session_id,
        storage.layout.index,
        metadata.state.value,
        to_micros(metadata.updated_at),
        to_micros(metadata.last_activity_at),
        expires,
        ttl,
        msgspec.json.encode(metadata.extra),
        storage.redis.publish,
        channel,
    ]
    closed = await storage.redis.write(
        "import_meta",
        [storage.layout.meta(session_id)],
        args,
        notice=CLOSED_NOTICE,  # published by the caller (replicas) only if it closed
        epoch_of=removed_epoch,
        channel=channel,
    )
    if closed:
        storage.live.feed.end(session_id, CLOSED, storage.served_epoch(removed_epoch(closed)))
