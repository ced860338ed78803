"""A connection's ``history`` and ``events`` requests: each is answered with one page
read from the store (server/pages.py) within the server's page reads (a slot, a
deadline), or, when the read fails, with the request's ``error`` (server/failures.py).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.frames import Events, EventsRequest, History, HistoryRequest

from .failures import request_error
from .outbound import Outbound
from .pages import events_reply, history_reply
from .services import Services


async def page_reply(
    services: Services,
    session_id: str,
    request: HistoryRequest | EventsRequest,
    codec: Codec,
    epoch: str | None = None,
) -> Outbound:
    """The reply to ``request``, framed for ``codec``, read from the log of ``epoch``
    (the one the connection is attached to: of a session replaced meanwhile, under the
    same id, the reply is ``not_found``). It is framed in the same step as the read
    returns, so the slots still bound the pages decoded at once."""
    config, storage = services.config, services.manager.storage
    read: Callable[[], Awaitable[History | Events]]
    if isinstance(request, HistoryRequest):
        limits = (config.max_history_page, config.max_page_bytes)
        read = functools.partial(history_reply, storage, session_id, request, *limits, epoch)
    else:
        limits = (config.max_events_page, config.max_page_bytes)
        read = functools.partial(events_reply, storage, session_id, request, *limits, epoch)
    try:
        reply: History | Events = await services.page_reads.read(read)
    except StorageError as exc:
        raise request_error(exc, request.id) from None
    return Outbound.reply(reply, codec)
