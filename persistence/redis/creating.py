"""A Redis session's creation, one script: ``create.lua`` makes its metadata, its log
and its index entries together, refused past ``max_sessions`` or its user's caps
(``counts_owner_caps``), and in place of an expired one (``replace_expired``) deletes
that one in the same step, its subscriptions here ended at once and every instance's by
the script's notice. Times are Redis's (``clock.py``): stamped by the script when the
session is made now, else restamped here by Redis's clock first."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.micros import to_micros
from bamboo_session.protocol.models import MessageEvent, Session

from ..base import OwnerCaps
from ..feed import DELETED
from ..index import copy_metadata
from . import appending
from .generation import CREATED_UNDER
from .layout import DELETED_NOTICE, metadata_fields
from .scripts import optional_arg, removed_epoch

if TYPE_CHECKING:
    from .storage import RedisStorage


async def create_session(
    storage: RedisStorage,
    session: Session,
    replace_expired: bool,
    made_now: bool,
    owner_caps: OwnerCaps | None,
) -> None:
    """The contract's ``create_session`` (persistence/base.py)."""
    storage.require_writable()
    session_id = check_session_id(session.metadata.id)
    meta = copy_metadata(session.metadata)
    if CREATED_UNDER in meta.epoch:  # the stored epoch's mark (generation.py)
        raise ValueError(f"session {session_id!r}: an epoch holds no {CREATED_UNDER!r}")
    meta.last_seq = 0
    meta.message_count = 0
    meta.stored_bytes = 0
    if meta.ttl is None and storage.config.default_ttl is not None:
        meta.ttl = storage.config.default_ttl
        meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
    # Made now, create.lua stamps it with its TIME.
    made_now = made_now or storage.clock.made_now(meta)
    if not made_now:
        await storage.clock.settle()  # a reading a local clock's jump left unsure: anew
        storage.clock.restamp(meta)  # times by Redis's clock, as every later write's
    maximum = storage.config.max_sessions
    live_cap, stored_cap = owner_caps or (0, 0)
    channel = storage.layout.channel(session_id)
    replaced = await storage.redis.write(
        "create",
        storage.layout.session_keys(session_id),
        [
            session_id,
            storage.layout.index,
            optional_arg(maximum),
            "expired" if replace_expired else "",
            storage.redis.publish,
            channel,
            to_micros(meta.updated_at) if made_now else "",
            optional_arg(live_cap or None),
            optional_arg(stored_cap or None),
            *metadata_fields(meta),
        ],
        notice=DELETED_NOTICE,  # published by the caller (replicas) only if replaced
        epoch_of=removed_epoch,
        channel=channel,
    )
    if replaced:
        storage.live.feed.end(session_id, DELETED, storage.served_epoch(removed_epoch(replaced)))
    if session.messages:  # what the session is made with: not held to the cap
        items = [(MessageEvent(message), None) for message in session.messages]
        await appending.append_events(storage, session_id, items, None, None)
