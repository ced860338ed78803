"""A connection's ``history`` and ``events`` requests: each is answered with one page
read from the store (server/pages.py) within the server's page reads (a slot, a
deadline), or, when the read fails, with the request's ``error`` (server/failures.py).

A page is charged to its peer's read allowance (server/read_allowance.py), shared with
the peer's other connections, its replays and its HTTP requests: in debt, the request
waits before its page is read, and the frames the peer sent behind it wait in turn
(the reader takes the next one only after this one), so a peer pipelining small
requests for big pages, on one connection or on many one after the other, gets its
pages at the allowance's rate. Nothing is refused for it. A request let through to its
read takes a page's worth (``--max-page-bytes``) from the allowance at once, given back
when its page is charged: 20 connections of one peer asking at once all found the
allowance as it was before any of their pages, and drew 20 pages of 1 MiB where it
held about one.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from websockets.asyncio.connection import Connection as WebSocket

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import ErrorCode, ProtocolError
from bamboo_session.protocol.frames import Events, EventsRequest, History, HistoryRequest

from .failures import request_error
from .flush import unframe
from .outbound import Outbound
from .outbox import Outbox
from .pages import events_reply, history_reply, within_frame
from .services import Services

if TYPE_CHECKING:
    from .connection import Connection


async def answer_page(
    conn: Connection, request: HistoryRequest | EventsRequest, outbox: Outbox
) -> None:
    """Queues the reply to ``request`` once the peer's allowance allows (nothing, if the
    connection is lost or its outbox closes meanwhile), and charges it."""
    assert conn.session_id is not None and conn.actor is not None
    allowance = conn.read_allowance
    if allowance is None:
        outbox.push(await _read_page(conn, request))
        return
    ended_within = functools.partial(_lost_within, conn.ws)
    if not await allowance.repaid(ended_within, conn.count_page_wait):
        return  # the connection is gone: nothing to read a page for
    if outbox.closing is not None:
        return  # closing while it waited: as for a frame read now, no answer
    # Taken in the same step as the debt was found repaid: the peer's other requests
    # find it there while this page is read.
    reserved = allowance.reserve(conn.services.config.max_page_bytes)
    size = 0
    try:
        reply = await _read_page(conn, request)
        size = len(reply.framed(conn.codec))
    finally:
        allowance.settle(reserved, size)
    outbox.push(reply)


async def _read_page(conn: Connection, request: HistoryRequest | EventsRequest) -> Outbound:
    """The reply to ``request``, read from the log of the epoch the connection is
    attached to, never from a session that took this one's place (its actor not yet
    told of the change)."""
    assert conn.session_id is not None and conn.actor is not None
    epoch = conn.actor.room.epoch
    return await page_reply(conn.services, conn.session_id, request, conn.codec, epoch)


async def _lost_within(ws: WebSocket, delay: float) -> bool:
    """Waits ``delay`` seconds at most; whether the connection is lost by then."""
    lost = ws.connection_lost_waiter
    await asyncio.wait((lost,), timeout=delay)
    return lost.done()


async def page_reply(
    services: Services,
    session_id: str,
    request: HistoryRequest | EventsRequest,
    codec: Codec,
    epoch: str | None = None,
) -> Outbound:
    """The reply to ``request``, framed for ``codec``, read from the log of ``epoch``
    (the one the connection is attached to: of a session replaced meanwhile, under the
    same id, the reply is ``not_found``), with no more items than its frame has room
    for within ``--max-frame-bytes`` (pages.within_frame). It is framed in the same
    step as the read returns, so the slots still bound the pages decoded at once.
    A first item that has no room even alone is ``too_large`` (:func:`no_room`)."""
    config, storage = services.config, services.manager.storage
    end = 0  # of a history page: the index just past its newest message
    try:
        if isinstance(request, HistoryRequest):
            limits = (config.max_history_page, config.max_page_bytes)
            read = functools.partial(history_reply, storage, session_id, request, *limits, epoch)
            reply: History | Events
            reply, end = await services.page_reads.read(read)
        else:
            limits = (config.max_events_page, config.max_page_bytes)
            events = functools.partial(events_reply, storage, session_id, request, *limits, epoch)
            reply = await services.page_reads.read(events)
    except StorageError as exc:
        raise request_error(exc, request.id) from None
    framed = Outbound.reply(reply, codec)
    limit = config.max_frame_bytes
    # Its WebSocket frame within the limit: so is the payload a client counts.
    if len(framed.framed(codec)) <= limit:
        return framed
    reply = within_frame(reply, codec, limit)
    framed = Outbound.reply(reply, codec)
    if (size := len(unframe(framed.framed(codec))[0])) > limit:
        raise no_room(reply, end, size, limit)
    return framed


def no_room(reply: History | Events, end: int, size: int, limit: int) -> ProtocolError:
    """``too_large`` for a page whose one item is over the frame limit with the request's
    ``id`` around it: an event or message stored before publishes kept room for the
    longest ``id`` (1,019 bytes; 269 before h457, none before that), by an in-process
    append of a manager without ``max_frame_bytes``, or copied by ``migrate`` from a
    store of a larger limit. Sent, the page would be closed with 1009 by a client
    reading frames of the limit, which would ask for it again, for ever. It is not
    skipped either: a page starts where it was asked to, or has no gap to tell."""
    if isinstance(reply, Events):
        seq = reply.events[0].seq
        what, past = f"the event at seq {seq}", f"after_seq {seq}"
    else:
        what, past = f"the message at index {end - 1}", f"before {end - 1}"
    return ProtocolError(
        ErrorCode.TOO_LARGE,
        f"{what} makes a page of {size} bytes with this request's id: over the frame"
        f" limit ({limit}); ask with a shorter id, or {past} to go past it",
        reply.id,
    )
