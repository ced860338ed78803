"""A peer's ``batch`` frame taken by its connection: checked (enabled, its item count,
the frame rate counting each item), its items made appends queued together, and posted
to the session's actor once the connection may have one more request in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bamboo_session.protocol.errors import ErrorCode, ProtocolError
from bamboo_session.protocol.frames import PublishBatch

from .closing import closed_for_rate
from .commands import batch_frame_appends
from .limits import FRAME_BYTES

if TYPE_CHECKING:
    from .actor import SessionActor
    from .connection import Connection
    from .outbox import Outbox


async def submit_batch(
    connection: Connection, frame: PublishBatch, actor: SessionActor, outbox: Outbox, size: int
) -> None:
    """A batch frame: its items become appends, queued together, answered with one
    ``acks`` (server/commands.py ``BatchReply``). Each item counts as a frame
    against the rate and as a request in the inbox; the batch is one request in
    flight, since it has one reply."""
    count = len(frame.items)
    # Each item but the first took about a frame's decode (~2 us): it costs a
    # frame's FRAME_BYTES against the byte rate, as a frame against the frame rate.
    connection.ws.charge_decoded(FRAME_BYTES * (count - 1))
    config = connection.services.config
    if not config.batch_frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "unknown frame type 'batch'", frame.id)
    if count > config.max_batch_items:
        reason = f"a batch holds at most {config.max_batch_items} items, not {count}"
        raise ProtocolError(ErrorCode.BAD_REQUEST, reason, frame.id)
    if count > 1 and not connection.limiter.admit_items(count - 1):
        if outbox.closing is None and not closed_for_rate(connection.limiter, outbox):
            reason = f"over {config.rate_limit:g} frames/s (a batch counts each item)"
            connection.push_error(ErrorCode.RATE_LIMITED, reason, frame.id)
        return
    connection.services.metrics.batch_items.observe(count)
    appends = batch_frame_appends(frame, outbox, size)
    if outbox.in_flight < outbox.max_in_flight:
        outbox.in_flight += 1
    else:
        await actor.inbox.budget.charged_while(size, outbox.reserve())
    # An actor that finished meanwhile refuses them; one still finishing stores them.
    if not actor.inbox.may_post(count):
        await actor.inbox.budget.charged_while(size, actor.room_for(count))
    actor.post_batch(appends)
