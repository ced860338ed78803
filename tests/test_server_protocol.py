"""Integration tests: what each frame of docs/protocol.md does, against a real server."""

from __future__ import annotations

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, open_peer, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def test_new_session_gets_an_id_and_a_welcome() -> None:
    async with (
        run_server() as server,
        attach(server, user_id="u1", title="My chat") as (_, welcome),
    ):
        session = welcome["session"]
        assert welcome["connection_id"].startswith("c_")
        assert session["id"] and session["user_id"] == "u1" and session["title"] == "My chat"
        assert session["state"] == "active" and session["connections"] == 1
        assert welcome["epoch"] == session["epoch"] and welcome["last_seq"] == 0
        assert welcome["resumed"] is False and welcome["replay"] == 0
        for field in ("created_at", "updated_at", "last_activity_at"):
            assert session[field].endswith("Z")


async def test_missing_session_closes_4404_unless_create() -> None:
    async with run_server() as server:
        async with open_peer(server, "nope") as peer:
            await peer.send({"type": "hello"})
            code, frames = await peer.closed()
            assert code == 4404 and frames == []
        async with attach(server, "chat-1", create=True, user_id="u7", title="T") as (_, welcome):
            assert welcome["session"]["id"] == "chat-1"
            assert welcome["session"]["user_id"] == "u7"
        # get-or-create: user_id and title apply only when the session is created
        async with attach(server, "chat-1", create=True, user_id="other") as (_, welcome):
            assert welcome["session"]["user_id"] == "u7"


async def test_events_fan_out_to_others_not_the_publisher() -> None:
    async with run_server() as server, attach(server, role="agent") as (agent, welcome):
        session_id = welcome["session"]["id"]
        async with attach(server, session_id) as (viewer, _):
            presence = await agent.recv()
            assert presence["type"] == "presence" and presence["role"] == "client"
            assert presence["connections"] == 2 and presence["joined"]
            ack = await agent.request({"type": "event", "id": 1, "event": token("Hi")}, "ack")
            assert ack == {"type": "ack", "id": 1, "seq": 1}
            frame = await viewer.recv()
            assert frame["type"] == "event" and frame["seq"] == 1
            assert frame["event"] == token("Hi") and frame["ts"].endswith("Z")
            pong = await agent.request({"type": "ping", "id": 2}, "pong")
            assert pong["id"] == 2  # the publisher never got its own event before this
        left = await agent.recv()
        assert left["type"] == "presence" and left["left"] and left["connections"] == 1


async def test_message_goes_to_history_and_to_the_log() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        session_id = welcome["session"]["id"]
        async with attach(server, session_id) as (viewer, _):
            message = {"role": "user", "content": "Hello!"}
            ack = await peer.request({"type": "message", "id": "m", "message": message}, "ack")
            assert ack["seq"] == 1
            event = await viewer.recv_type("event")
            stored = event["event"]["message"]
            assert event["event"]["type"] == "message" and stored["content"] == "Hello!"
            assert stored["id"] and stored["created_at"].endswith("Z")
            history = await viewer.request({"type": "history", "id": 9}, "history")
            assert history["id"] == 9 and history["has_more"] is False
            assert [m["content"] for m in history["messages"]] == ["Hello!"]
            assert history["messages"][0]["id"] == stored["id"]


async def test_idempotency_key_acks_the_first_seq_as_duplicate() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        first = await peer.request(
            {"type": "event", "id": 1, "event": token("a"), "key": "k1"}, "ack"
        )
        other = await peer.request({"type": "event", "id": 2, "event": token("b")}, "ack")
        again = await peer.request(
            {"type": "event", "id": 3, "event": token("a"), "key": "k1"}, "ack"
        )
        assert first == {"type": "ack", "id": 1, "seq": 1}
        assert other["seq"] == 2
        assert again == {"type": "ack", "id": 3, "seq": 1, "duplicate": True}
        events = await peer.request({"type": "events", "id": 4}, "events")
        assert [e["seq"] for e in events["events"]] == [1, 2] and events["last_seq"] == 2


async def test_duplicate_keys_in_one_burst_are_appended_once() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        for request_id in range(20):
            await peer.send({"type": "event", "id": request_id, "event": token("x"), "key": "same"})
        acks = [await peer.recv_type("ack") for _ in range(20)]
        assert [a["id"] for a in acks] == list(range(20))
        assert {a["seq"] for a in acks} == {1}
        assert sum(1 for a in acks if a.get("duplicate")) == 19


async def test_an_empty_key_is_a_key_like_any_other() -> None:
    # PROTOCOL.md: `key` is a string; "" is one, so a second append with it is a duplicate.
    async with run_server() as server, attach(server) as (peer, _):
        first = await peer.request(
            {"type": "event", "id": 1, "event": token("a"), "key": ""}, "ack"
        )
        again = await peer.request(
            {"type": "event", "id": 2, "event": token("b"), "key": ""}, "ack"
        )
        message = {"role": "user", "content": "m"}
        as_message = await peer.request(
            {"type": "message", "id": 3, "message": message, "key": ""}, "ack"
        )
        unkeyed = await peer.request(
            {"type": "event", "id": 4, "event": token("c"), "key": None}, "ack"
        )
        assert first == {"type": "ack", "id": 1, "seq": 1}
        assert again == {"type": "ack", "id": 2, "seq": 1, "duplicate": True}
        assert as_message == {"type": "ack", "id": 3, "seq": 1, "duplicate": True}
        assert unkeyed == {"type": "ack", "id": 4, "seq": 2}  # null is no key
        events = await peer.request({"type": "events", "id": 5}, "events")
        assert [e["event"] for e in events["events"]] == [token("a"), token("c")]
        history = await peer.request({"type": "history", "id": 6}, "history")
        assert history["messages"] == []


@pytest.mark.durable
@pytest.mark.parametrize("key", ["k", ""])
async def test_keys_survive_a_restart(tmp_path: object, key: str) -> None:
    async with (
        run_server(data_dir=str(tmp_path)) as server,
        attach(server, "s1", create=True) as (
            peer,
            _,
        ),
    ):
        await peer.request({"type": "event", "id": 1, "event": token("a"), "key": key}, "ack")
    async with run_server(data_dir=str(tmp_path)) as server, attach(server, "s1") as (peer, _):
        again = await peer.request(
            {"type": "event", "id": 2, "event": token("a"), "key": key}, "ack"
        )
        assert again == {"type": "ack", "id": 2, "seq": 1, "duplicate": True}
        items = [{"event": token("b"), "key": key}]
        acks = await peer.request({"type": "batch", "id": 3, "items": items}, "acks")
        assert acks["seqs"] == [1] and acks["duplicates"] == [0]
        events = await peer.request({"type": "events", "id": 4}, "events")
        assert events["last_seq"] == 1


async def test_history_pages_newest_first_within_oldest_first_pages() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        for i in range(5):
            message = {"role": "user", "content": f"m{i}"}
            await peer.request({"type": "message", "id": i, "message": message}, "ack")
        page = await peer.request({"type": "history", "id": 1, "limit": 2}, "history")
        assert [m["content"] for m in page["messages"]] == ["m3", "m4"] and page["has_more"]
        page = await peer.request({"type": "history", "id": 2, "limit": 2, "before": 3}, "history")
        assert [m["content"] for m in page["messages"]] == ["m1", "m2"] and page["has_more"]
        page = await peer.request({"type": "history", "id": 3, "limit": 2, "before": 1}, "history")
        assert [m["content"] for m in page["messages"]] == ["m0"] and not page["has_more"]
        page = await peer.request({"type": "history", "id": 4}, "history")
        assert len(page["messages"]) == 5 and not page["has_more"]


async def test_events_pages_after_seq_with_limit() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        for i in range(7):
            await peer.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
        page = await peer.request({"type": "events", "id": 1, "after_seq": 2, "limit": 3}, "events")
        assert [e["seq"] for e in page["events"]] == [3, 4, 5]
        assert page["last_seq"] == 7 and page["events"][0]["event"] == token("2")
        assert page["epoch"] == welcome["epoch"]  # the log's it was read from
        assert set(page["events"][0]) == {"seq", "ts", "event"}
        # last_seq is the session's, not the page's: an empty page says it too.
        for after_seq in (7, 100):
            page = await peer.request({"type": "events", "after_seq": after_seq}, "events")
            assert (page["events"], page["last_seq"]) == ([], 7)


async def test_closing_a_session_closes_everyone_and_refuses_later_attaches() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        session_id = welcome["session"]["id"]
        async with attach(server, session_id) as (viewer, _):
            await peer.recv_type("presence")
            await peer.send({"type": "state", "id": 1, "state": "closed"})
            code, frames = await peer.closed()
            assert code == 1000
            assert [f["type"] for f in frames] == ["ack", "closed"]
            code, frames = await viewer.closed()
            assert code == 1000 and frames[-1]["type"] == "closed"
        async with open_peer(server, session_id) as late:
            await late.send({"type": "hello"})
            code, _ = await late.closed()
            assert code == 4409
        metadata = await server.manager.get_metadata(session_id)
        assert metadata is not None and metadata.state == "closed"
        assert [m.content for m in await server.manager.get_session_history(session_id)] == []


async def test_state_idle_and_active_are_acked() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        ack = await peer.request({"type": "state", "id": "s", "state": "idle"}, "ack")
        assert ack == {"type": "ack", "id": "s", "seq": 0}
        metadata = await server.manager.get_metadata(welcome["session"]["id"])
        assert metadata is not None and metadata.state == "idle"
        await peer.request({"type": "state", "id": "t", "state": "active"}, "ack")


async def test_a_state_request_is_acked_with_the_last_seq_and_not_told_to_other_peers() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        async with attach(server, welcome["session"]["id"]) as (viewer, _):
            await peer.recv_type("presence")
            await peer.request({"type": "event", "id": "e1", "event": token("a")}, "ack")
            # The second asks for the state the session is in: a no-op, acked the same.
            for request_id, state in (("s1", "idle"), ("s2", "idle"), ("s3", "active")):
                ack = await peer.request({"type": "state", "id": request_id, "state": state}, "ack")
                assert ack == {"type": "ack", "id": request_id, "seq": 1}
            await peer.request({"type": "event", "id": "e2", "event": token("b")}, "ack")
            # Nothing about the state came between the viewer's two events.
            frames = [await viewer.recv(), await viewer.recv()]
            assert [(f["type"], f.get("seq")) for f in frames] == [("event", 1), ("event", 2)]


async def test_a_state_sent_right_behind_appends_is_acked_with_their_last_seq() -> None:
    """Pipelined behind appends, a ``state`` is acked after them (replies in order) and
    with the session's last seq, theirs: it was acked with the seq the session's viewers
    had been sent up to, 0 here, below the acks just before it."""
    async with run_server() as server, attach(server) as (peer, _):
        frames = [
            {"type": "event", "id": "e1", "event": token("a")},
            {"type": "state", "id": "s1", "state": "idle"},
            {"type": "event", "id": "e2", "event": token("b")},
            {"type": "state", "id": "s2", "state": "idle"},  # a no-op: acked the same
            {"type": "batch", "id": "b", "items": [{"event": token("c")}, {"event": token("d")}]},
            {"type": "state", "id": "s3", "state": "active"},
        ]
        for frame in frames:
            await peer.send(frame)
        replies = [await peer.recv() for _ in frames]
        assert [(r["type"], r["id"], r.get("seq", r.get("seqs"))) for r in replies] == [
            ("ack", "e1", 1),
            ("ack", "s1", 1),
            ("ack", "e2", 2),
            ("ack", "s2", 2),
            ("acks", "b", [3, 4]),
            ("ack", "s3", 4),
        ]
