"""The requests a :class:`.BambooClient` makes of its session, each a frame out and its
reply in, through the client's :class:`.Link`, which sends it again after a reconnect
until it is answered. Publishes always carry an idempotency key (generated when not
given), so one that is resent after a reconnect is stored once: the server answers it
with the first ``seq``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Literal

from ..frames import (
    Ack,
    Events,
    EventsRequest,
    History,
    HistoryRequest,
    Ping,
    PublishEvent,
    PublishMessage,
    StateRequest,
)
from ..models import AnyAgentEvent, Message, StoredEvent
from .link import Link
from .log_pages import log_pages
from .results import EventPage, HistoryPage
from .state import ClientState


def _key_or_new(key: str | None) -> str:
    """The idempotency key a publish goes out with: the caller's, ``""`` included (a
    key like any other on the wire), or 128 random bits in hex when none was given."""
    return secrets.token_hex(16) if key is None else key


class SessionRequests:
    """The request calls of :class:`.BambooClient`, its base class: the client's link
    and what it knows of the session are set by the client."""

    _link: Link
    _state: ClientState

    async def publish(self, event: AnyAgentEvent, key: str | None = None) -> int:
        """Append ``event`` to the session's log; its ``seq``. ``key`` (an idempotency
        key, generated when ``None``; ``""`` is a key like any other) makes retries
        safe: the same key within the server's window returns the first ``seq``
        instead of appending again.

        Publishes that queue up together (made by several tasks at once, or while the
        connection is down) go out as one ``batch`` frame when the server offers it;
        each still gets its own ``seq``, in the order of the calls. A lone publish goes
        out at once, on its own."""
        request_id = self._next_id()
        frame = PublishEvent(event, id=request_id, key=_key_or_new(key))
        reply: Ack = await self._link.request(request_id, frame, is_publish=True)
        return reply.seq

    async def send_message(self, message: Message, key: str | None = None) -> int:
        """Append ``message`` to the history (and as a ``message`` event to the log);
        its ``seq``. Idempotent like :meth:`publish`."""
        request_id = self._next_id()
        frame = PublishMessage(message, id=request_id, key=_key_or_new(key))
        reply: Ack = await self._link.request(request_id, frame, is_publish=True)
        return reply.seq

    async def history(self, limit: int = 100, before: int | None = None) -> HistoryPage:
        """The newest ``limit`` messages before index ``before`` (default: the end)."""
        request_id = self._next_id()
        frame = HistoryRequest(id=request_id, limit=limit, before=before)
        reply: History = await self._link.request(request_id, frame)
        return HistoryPage(reply.messages, reply.has_more)

    async def read_events(self, after_seq: int = 0, limit: int = 1000) -> EventPage:
        """Up to ``limit`` events of the log with ``seq > after_seq``, oldest first."""
        request_id = self._next_id()
        frame = EventsRequest(id=request_id, after_seq=after_seq, limit=limit)
        reply: Events = await self._link.request(request_id, frame)
        events = [StoredEvent(r.seq, r.ts, r.event) for r in reply.events]  # type: ignore[arg-type]
        return EventPage(events, reply.last_seq, reply.epoch)

    def event_pages(
        self,
        after_seq: int = 0,
        page: int = 1000,
        *,
        epoch: str | None = None,
        until_seq: int | None = None,
    ) -> AsyncIterator[EventPage]:
        """The log after ``after_seq`` in pages of at most ``page`` events (none empty),
        each read as it is iterated, up to ``until_seq`` (default: the log's
        ``last_seq`` as the first page reports it, so a read of a log that keeps
        growing ends), or sooner at the log's end: it never waits for events. All of
        one log: that of ``epoch`` when given (say, a saved ``last_seq``'s), else the
        one the client is attached to now, which ``after_seq`` counts in. A page of
        another log (the session was replaced and the client reconnected onto the new
        one, before the first page as well as between two) raises
        :class:`EpochChanged`; a new read reads the new log. Pages without an epoch
        (servers from before the epoch fence) are not checked."""
        pinned = self._state.epoch if epoch is None else epoch
        return log_pages(self.read_events, after_seq, page, pinned, until_seq)

    async def read_all_events(
        self,
        after_seq: int = 0,
        page: int = 1000,
        *,
        epoch: str | None = None,
        until_seq: int | None = None,
    ) -> list[StoredEvent]:
        """Every event after ``after_seq`` up to ``until_seq`` (default: the log's
        ``last_seq`` as the read begins), read with :meth:`event_pages`: all of one
        log, else :class:`EpochChanged`, never two logs joined."""
        events: list[StoredEvent] = []
        async for got in self.event_pages(after_seq, page, epoch=epoch, until_seq=until_seq):
            events.extend(got.events)
        return events

    async def set_state(self, state: Literal["active", "idle", "closed"]) -> int:
        """Ask for a session state; ``closed`` ends the session for every peer."""
        request_id = self._next_id()
        reply: Ack = await self._link.request(request_id, StateRequest(state, id=request_id))
        return reply.seq

    async def ping(self) -> float:
        """A round trip to the session's server, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_id = self._next_id()
        await self._link.request(request_id, Ping(id=request_id))
        return loop.time() - started

    def _next_id(self) -> int:
        return self._state.pending.next_id()
