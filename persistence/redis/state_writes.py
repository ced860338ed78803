"""A Redis session's state and activity writes, each one script: ``state.lua`` (a move
in the state table, fenced by the epoch served and, for a look's idle, by the
``updated`` time its caller read) and ``touch.lua`` (activity now: the sliding TTL
starts again). A refusal for an earlier generation's epoch has the store check its
generation (a restart of Redis that this instance has not heard of yet). A close in
doubt with ``wait_replicas`` (its notice published only once a reply is in) is read
back, and told of if it was made."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.micros import to_micros
from bamboo_session.protocol.models import SessionMetadata, SessionState

from ..base import OutcomeUnknown, StorageError
from ..feed import CLOSED
from ..state_condition import check_condition
from .layout import CLOSED_NOTICE
from .scripts import HistoryLost, ReplicasBehind, epoch_in_hash

if TYPE_CHECKING:
    from .storage import RedisStorage

log = logging.getLogger(__name__)


async def update_session_state(
    storage: RedisStorage,
    session_id: str,
    state: SessionState,
    epoch: str | None,
    unless_updated_since: datetime | None,
) -> SessionMetadata:
    """The contract's ``update_session_state`` (persistence/base.py); a close ends the
    session's subscriptions here at once, every instance's by the script's notice."""
    storage.require_writable()
    session_id = check_session_id(session_id)
    check_condition(state, unless_updated_since)
    layout, redis = storage.layout, storage.redis
    allowed = " ".join(s.value for s in SessionState if s.can_become(state))
    channel = layout.channel(session_id)
    args = [session_id, layout.index, state.value, allowed, redis.publish, channel]
    args.append(epoch or "")  # as served: checked in the script, generation too
    args.append("" if unless_updated_since is None else str(to_micros(unless_updated_since)))
    try:
        flat = await redis.write(
            "state",
            [layout.meta(session_id)],
            args,
            notice=CLOSED_NOTICE if state == SessionState.CLOSED else None,
            epoch_of=epoch_in_hash,
            channel=channel,
        )
    except HistoryLost:
        await storage.generation.check(refused=True)
        raise
    except OutcomeUnknown as doubt:
        # A ReplicasBehind was made, and told of all the same (client.py write).
        told = redis.publish != "" or isinstance(doubt, ReplicasBehind)
        if state == SessionState.CLOSED and not told:
            await _tell_if_closed(storage, session_id, channel, epoch)
        raise
    if state == SessionState.CLOSED:
        storage.live.feed.end(session_id, CLOSED, storage.served_epoch(epoch_in_hash(flat)))
    return storage.served_metadata(flat)


async def _tell_if_closed(
    storage: RedisStorage, session_id: str, channel: str, epoch: str | None
) -> None:
    """A close in doubt under ``wait_replicas``, whose notice goes out only once the
    script's reply is in (the script publishes nothing): read the session, and if it
    is closed (of the epoch meant, if one was), publish the notice the reply would
    have, else no instance but this one hears of the close, and another's connections
    stay attached to the closed session until its next look (up to ``idle_timeout``).
    A session closed before (by another instance, which told of it) is told of once
    more, which ends nothing more. A failure leaves it to the looks, as before."""
    try:
        meta = storage.layout.meta(session_id)
        stored = await storage.redis.read("HMGET", meta, "state", "epoch")
        state, stored_epoch = (None if value is None else value.decode() for value in stored)
        if state != SessionState.CLOSED.value or stored_epoch is None:
            return  # not closed, or gone (deleted: its own notice told of it)
        if epoch is not None and storage.served_epoch(stored_epoch) != epoch:
            return  # another session under the id: not this close's to tell
        await storage.redis.tell_found_made(channel, CLOSED_NOTICE, stored_epoch)
    except StorageError as exc:
        log.warning("telling of a close in doubt found made failed: %s", exc)


async def touch(storage: RedisStorage, session_id: str, epoch: str | None) -> None:
    """The contract's ``touch``: a closed session is left as it closed (the script
    checks, so a touch racing a close on another instance never lands after it)."""
    storage.require_writable()
    session_id = check_session_id(session_id)
    # The epoch as served: checked in the script, against the generation too.
    args = [session_id, storage.layout.index, epoch or ""]
    try:
        await storage.redis.run("touch", [storage.layout.meta(session_id)], args)
    except HistoryLost:
        await storage.generation.check(refused=True)
        raise
