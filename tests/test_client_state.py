"""What a client knows of its session, fed server frames directly
(protocol/client/state.py): hellos, welcomes, replies, events, the end. No socket; the
request futures belong to an event loop that never runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bamboo_session.protocol import SessionMetadata, Token
from bamboo_session.protocol.client import RequestError, Reset, SessionEnded, StoredEvent
from bamboo_session.protocol.client.feed import END, EventFeed
from bamboo_session.protocol.client.state import ClientState
from bamboo_session.protocol.frames import (
    Ack,
    Closed,
    Error,
    EventFrame,
    Hello,
    Pong,
    Presence,
    Welcome,
)

TS = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def welcome(last_seq: int, resumed: bool, epoch: str = "E", connections: int = 1) -> Welcome:
    meta = SessionMetadata(id="s1", epoch=epoch, last_seq=last_seq, connections=connections)
    return Welcome("c_1", meta, epoch, last_seq, resumed, 0)


def event(seq: int) -> EventFrame:
    return EventFrame(seq, TS, Token(str(seq)))


def drain(state: ClientState) -> list[Any]:
    items = []
    while len(state.feed):
        items.append(state.feed.get_nowait())
    if state.feed.ended:
        items.append(END)
    return items


def request(
    state: ClientState, loop: asyncio.AbstractEventLoop, is_publish: bool = True
) -> tuple[int, asyncio.Future[Any]]:
    request_id = state.pending.next_id()
    future: asyncio.Future[Any] = loop.create_future()
    state.pending.add(request_id, object(), future, is_publish)
    return request_id, future


def test_the_first_hello_is_as_given_and_a_reconnect_resumes_without_creating() -> None:
    first = Hello(token="t", user_id="u", title="T", create=True, role="agent")
    state = ClientState(first, "s1", receive_events=True)
    assert state.next_hello() is first
    state.welcomed(welcome(3, resumed=False), first.last_seq)
    assert drain(state) == [], "no resume asked, no Reset"
    again = state.next_hello()
    assert (again.create, again.last_seq, again.epoch) == (False, 3, "E")
    assert (again.token, again.user_id, again.title, again.role) == ("t", "u", "T", "agent")


def test_welcome_sets_what_the_client_knows() -> None:
    state = ClientState(Hello(create=True), None, receive_events=True)
    state.closed_reason = "from before"
    state.welcomed(welcome(0, resumed=False, connections=2), None)
    assert (state.session_id, state.connection_id, state.epoch) == ("s1", "c_1", "E")
    assert state.connections == 2 and state.session is not None
    assert state.closed_reason is None


def test_a_resume_refused_queues_a_reset_and_starts_again_from_the_welcome() -> None:
    state = ClientState(Hello(last_seq=99, epoch="old"), "s1", receive_events=True)
    state.welcomed(welcome(5, resumed=False), 99)
    assert drain(state) == [Reset("E", 5, "old", 99)]
    state.receive(event(6))
    assert [item.seq for item in drain(state)] == [6]


def test_a_publish_only_client_checks_events_but_queues_nothing() -> None:
    state = ClientState(Hello(last_seq=9), "s1", receive_events=False)
    state.welcomed(welcome(5, resumed=False), 9)
    state.receive(event(6))
    assert drain(state) == [] and state.sequence.resume_point == 6


def test_events_are_queued_in_order() -> None:
    state = ClientState(Hello(last_seq=0), "s1", receive_events=True)
    state.welcomed(welcome(2, resumed=True), 0)
    for seq in (1, 2, 3):
        state.receive(event(seq))
    items = drain(state)
    assert all(isinstance(i, StoredEvent) for i in items)
    assert [(i.seq, i.event) for i in items] == [(s, Token(str(s))) for s in (1, 2, 3)]


def test_events_are_owed_until_the_feed_reaches_the_last_seq_known(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A resume's replay goes up to the welcome's last_seq: until the feed has it, the
    session's end would leave events undelivered; an ack of ours raises the bar too."""
    state = ClientState(Hello(last_seq=0), "s1", receive_events=True)
    state.welcomed(welcome(3, resumed=True), 0)
    for seq in (1, 2):
        state.receive(event(seq))
        assert state.owes_events, f"replayed through {seq} of 3"
    state.receive(event(3))
    assert not state.owes_events
    request_id, _ = request(state, loop)
    state.receive(Ack(5, id=request_id))  # ours is 5: 4 is someone else's, on its way
    assert state.owes_events
    state.receive(event(4))
    assert not state.owes_events and state.sequence.resume_point == 5
    # A publish-only client delivers no events: it owes none.
    publisher = ClientState(Hello(last_seq=0), "s1", receive_events=False)
    publisher.welcomed(welcome(3, resumed=True), 0)
    assert not publisher.owes_events


def test_past_a_full_feed_events_are_skipped_until_the_next_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """An event that finds the feed full is not queued and not counted as seen, nor is
    any later one of that connection, even once there is room (that would leave a gap);
    our own acks still count; the next connection resumes from the last event queued."""
    feed = EventFeed(max_events=2)
    state = ClientState(Hello(last_seq=0), "s1", receive_events=True, feed=feed)
    state.welcomed(welcome(0, resumed=True), 0)
    publish, published = request(state, loop)
    state.receive(event(1))
    state.receive(event(2))
    assert state.backlogged and not state.overflowed
    state.receive(event(3))
    state.receive(Ack(5, id=publish))
    assert published.result() == Ack(5, id=publish)
    assert feed.get_nowait().seq == 1, "room again"
    state.receive(event(4))
    assert (state.overflowed, state.skipped, len(feed)) == (True, 2, 1)
    assert state.sequence.resume_point == 2
    hello = state.next_hello()
    assert hello.last_seq == 2
    state.welcomed(welcome(5, resumed=True), hello.last_seq)
    assert not state.overflowed
    assert [i.seq for i in drain(state)] == [2]
    state.receive(event(3))
    state.receive(event(4))
    assert [i.seq for i in drain(state)] == [3, 4]
    state.receive(event(5))  # our own publish's, echoed to the new connection
    assert drain(state) == [] and state.sequence.resume_point == 5
    assert (state.skipped, state.overflowed) == (2, False)


def test_replies_answer_their_requests(loop: asyncio.AbstractEventLoop) -> None:
    state = ClientState(Hello(), "s1", receive_events=True)
    state.welcomed(welcome(0, resumed=False), None)
    publish, published = request(state, loop)
    ping, ponged = request(state, loop, is_publish=False)
    failing, failed = request(state, loop, is_publish=False)
    state.receive(Ack(1, id=publish))
    state.receive(Pong(id=ping))
    state.receive(Error("rate_limited", "slow down", id=failing))
    assert published.result() == Ack(1, id=publish) and ponged.result() == Pong(id=ping)
    error = failed.exception()
    assert isinstance(error, RequestError) and error.code == "rate_limited"
    assert state.sequence.resume_point == 1, "our own publish's seq counts as seen"
    state.receive(Error("bad_request", "undecodable"))  # no id: nothing to answer
    state.receive(Ack(7, id="not ours"))  # a reply to nobody is ignored
    assert len(state.pending) == 0


def test_presence_and_closed_update_what_the_client_shows() -> None:
    state = ClientState(Hello(), "s1", receive_events=True)
    state.welcomed(welcome(0, resumed=False), None)
    state.receive(Presence(role="agent", connections=3, joined="c_2"))
    state.receive(Closed("session closed"))
    assert (state.connections, state.closed_reason) == (3, "session closed")


def test_finish_fails_every_request_and_ends_the_feed_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    state = ClientState(Hello(), "s1", receive_events=True)
    _, waiting = request(state, loop)
    ended = SessionEnded("client closed")
    assert state.finish(ended) is True
    assert state.finish(SessionEnded("again")) is False
    assert waiting.exception() is ended and state.failure is ended
    assert drain(state) == [END]
