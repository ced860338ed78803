"""The session room on its own, with no event loop and no I/O: who gets which event,
what a joiner is welcomed and replayed, presence, the ring."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Closed, EventFrame, Presence, Welcome
from bamboo_session.protocol.models import SessionMetadata, StoredEvent, Token
from bamboo_session.server.outbound import EventOutbound, Outbound
from bamboo_session.server.outbox import CloseRequest, Outbox, OutboxItem
from bamboo_session.server.read_back import Replay
from bamboo_session.server.room import REPLAY_PAGE, SessionRoom

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def events(first: int, last: int) -> list[StoredEvent]:
    return [StoredEvent(seq, T0, Token(f"t{seq}")) for seq in range(first, last + 1)]


def drain(outbox: Outbox) -> list[OutboxItem]:
    items = []
    while (item := outbox.get_nowait()) is not None:
        items.append(item)
    return items


def seqs(items: list[OutboxItem]) -> list[int]:
    return [
        item.frame.seq
        for item in items
        if isinstance(item, Outbound) and isinstance(item.frame, EventFrame)
    ]


def room_with(*connection_ids: str, published: int = 0) -> tuple[SessionRoom, list[Outbox]]:
    room = SessionRoom("ep", published, ring_size=8)
    outboxes = []
    for connection_id in connection_ids:
        outbox = Outbox(connection_id, "client", limit=100)
        room.join(outbox, None, None, SessionMetadata(id="s"))
        outboxes.append(outbox)
    for outbox in outboxes:
        drain(outbox)
    return room, outboxes


def test_an_event_goes_to_everyone_but_its_publisher() -> None:
    room, (a, b, c) = room_with("a", "b", "c")
    room.expect(1, a)
    room.deliver(events(1, 2))
    assert seqs(drain(a)) == [2]
    assert seqs(drain(b)) == [1, 2] and seqs(drain(c)) == [1, 2]
    assert room.published_seq == 2 and not room.origins


def test_events_share_one_frame_encoded_from_the_stored_json() -> None:
    room, (a, b) = room_with("a", "b")
    room.deliver(events(1, 1))
    (first,) = drain(a)
    (second,) = drain(b)
    assert first is second  # one Outbound, so one encoding per codec for all connections
    assert isinstance(first, Outbound) and isinstance(first.frame, EventFrame)
    stored = events(1, 1)[0]
    assert first.frame.event == stored.event_json  # the stored bytes, not re-encoded
    # The rings hold many: the cycle collector must not re-walk them, and it need not,
    # since the frame keeps the event's JSON and no object the append was given.
    assert isinstance(first, EventOutbound) and not gc.is_tracked(first)
    assert not gc.is_tracked(first.frame) and first.stored_event() == stored


def test_a_joiner_is_welcomed_then_replayed_what_it_missed() -> None:
    room, (viewer,) = room_with("v", published=0)
    room.deliver(events(1, 5))
    joiner = Outbox("j", "agent", limit=100)
    welcome = room.join(joiner, 2, "ep", SessionMetadata(id="s"))
    assert (welcome.last_seq, welcome.resumed, welcome.replay) == (5, True, 3)
    assert welcome.session.connections == 2 and welcome.session.last_seq == 5
    items = drain(joiner)
    assert isinstance(items[0], Outbound) and isinstance(items[0].frame, Welcome)
    assert isinstance(items[1], Replay) and (items[1].after, items[1].through) == (2, 5)
    joined = drain(viewer)[-1]
    assert isinstance(joined, Outbound) and isinstance(joined.frame, Presence)
    assert (joined.frame.joined, joined.frame.role, joined.frame.connections) == ("j", "agent", 2)


def test_resume_is_refused_for_another_epoch_or_a_future_seq() -> None:
    room, _ = room_with(published=3)
    for last_seq, epoch in ((1, "other"), (9, "ep")):
        welcome = room.join(Outbox(f"x{last_seq}", "client", 10), last_seq, epoch, _meta())
        assert (welcome.resumed, welcome.replay) == (False, 0)
    welcome = room.join(Outbox("y", "client", 10), 0, None, _meta())  # epoch optional
    assert (welcome.resumed, welcome.replay) == (True, 3)


def test_leaving_closes_and_tells_the_others() -> None:
    room, (a, b) = room_with("a", "b")
    assert room.leave("a") is a
    assert room.leave("a") is None
    closing = drain(a)[-1]
    assert isinstance(closing, CloseRequest) and closing.code == CloseCode.NORMAL
    left = drain(b)[-1]
    assert isinstance(left, Outbound) and isinstance(left.frame, Presence)
    assert (left.frame.left, left.frame.connections) == ("a", 1)


def test_session_wide_counts_given_by_the_actor_replace_the_rooms_own() -> None:
    """On a store several processes share, the actor passes the counts of every
    process (server/presence.py); another process's joins and leaves are announced."""
    room, (a,) = room_with("a")
    b = Outbox("b", "agent", limit=100)
    welcome = room.join(b, None, None, SessionMetadata(id="s"), connections=5)
    assert welcome.session.connections == 5
    joined = drain(a)[-1]
    assert isinstance(joined, Outbound) and joined.frame == Presence("agent", 5, joined="b")
    room.announce("elsewhere", "client", False, 4)
    for outbox in (a, b):
        (left,) = [item for item in drain(outbox) if isinstance(item, Outbound)][-1:]
        assert left.frame == Presence("client", 4, left="elsewhere")
    room.leave("b", connections=3)
    left = drain(a)[-1]
    assert isinstance(left, Outbound) and left.frame == Presence("agent", 3, left="b")


def test_an_event_handed_out_again_goes_to_nobody_again() -> None:
    # Should the feed ever hand out events twice (a fault of its own), each connection
    # still gets each event once and in order, and the ring holds each once.
    room, (viewer,) = room_with("v")
    assert room.deliver(events(1, 2)) == 0
    assert room.deliver(events(1, 3)) == 2  # 1 and 2 again, then 3
    assert seqs(drain(viewer)) == [1, 2, 3]
    assert [out.seq for out in room.ring or []] == [1, 2, 3]
    assert [out.seq for out in room.ring_page(0, 3) or []] == [1, 2, 3]
    # A joiner's stream starts after what was fanned out when it joined.
    joiner = Outbox("j", "client", limit=100)
    room.join(joiner, None, None, _meta())
    drain(joiner)
    assert room.deliver(events(3, 4)) == 1
    assert seqs(drain(joiner)) == [4] and seqs(drain(viewer)) == [4]
    # A gap is let through as it comes (the peer sees it in the seqs, and resumes).
    assert room.deliver(events(6, 6)) == 0 and seqs(drain(viewer)) == [6]
    assert room.published_seq == 6 and room.repeated == 3


def test_close_all_sends_closed_then_the_code() -> None:
    room, (a,) = room_with("a")
    room.close_all(CloseCode.SESSION_CLOSED, "bye")
    first, second = drain(a)
    assert isinstance(first, Outbound) and first.frame == Closed("bye")
    assert isinstance(second, CloseRequest) and second.code == CloseCode.SESSION_CLOSED
    assert not room.outboxes


def test_ring_pages_and_their_limits() -> None:
    room, _ = room_with()
    room.deliver(events(1, 10))  # the ring keeps the newest 8: 3..10
    assert room.ring_page(1, 10) is None  # does not reach back to seq 2
    page = room.ring_page(2, 10)
    assert page is not None and [out.seq for out in page] == list(range(3, 11))
    page = room.ring_page(4, 6)
    assert page is not None and [out.seq for out in page] == [5, 6]
    room.shrink_ring(2)
    assert room.ring_page(7, 10) is None
    assert [out.seq for out in room.ring_page(8, 10) or []] == [9, 10]
    room.shrink_ring(0)
    assert room.ring is None and REPLAY_PAGE >= 8


def test_restarting_drops_a_ring_that_no_longer_follows_the_log() -> None:
    room, (a,) = room_with("a")
    room.deliver(events(1, 3))
    room.expect(4, a)
    room.restart_at(3)  # nothing happened meanwhile: kept
    assert room.ring is not None and room.origins
    room.restart_at(7)
    assert room.ring is None and not room.origins and room.published_seq == 7


def _meta() -> SessionMetadata:
    return SessionMetadata(id="s")
