"""``null`` for an optional field is the same as leaving it out, on a real server over a
real WebSocket, in JSON and in MessagePack (docs/protocol.md, "Frames: general rules"):
clients in Java, C#, Go, Kotlin or Swift send their unset optional fields as ``null``.
A required field sent as ``null`` is still ``bad_request``, with the request's ``id``;
in free-form values (``custom.data``, tool ``arguments``, ``metadata`` values) ``null``
is a value, kept as sent. On every store (tests/server_backends.py): each reads back
what it stored in its own way (a log line, a row, a stream entry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, get, open_peer, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = [
    pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"]),
    pytest.mark.usefixtures("server_store"),
]


def without_server_fills(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without what the server fills in (its id and time), which
    differ between two appends; both must be there."""
    assert message["id"].startswith("m_") and message["created_at"], message
    return {k: v for k, v in message.items() if k not in ("id", "created_at")}


async def test_hello_with_every_field_null_is_a_bare_hello(msgpack: bool) -> None:
    nulls = dict.fromkeys(["token", "user_id", "title", "create", "last_seq", "epoch", "role"])
    async with (
        run_server() as server,
        attach(server, msgpack=msgpack, id=None, **nulls) as (peer, welcome),
        attach(server, welcome["session"]["id"], msgpack=msgpack) as (_, other),
    ):
        # A new session, as a bare hello on /api/v1/stream makes; no resume.
        assert (welcome["resumed"], welcome["replay"]) == (False, 0)
        assert (welcome["session"]["user_id"], welcome["session"]["title"]) == (None, None)
        # role null is the default role, as other peers see it.
        presence = await peer.recv_type("presence")
        assert presence["role"] == "client" and presence["joined"] == other["connection_id"]


async def test_hello_create_null_is_no_create(msgpack: bool) -> None:
    async with run_server() as server, open_peer(server, "missing", msgpack=msgpack) as peer:
        await peer.send({"type": "hello", "create": None})
        code, frames = await peer.closed()
        assert (code, frames) == (4404, [])  # as without create: not found, no session made


async def test_hello_resume_with_null_epoch_resumes_in_the_current_one(msgpack: bool) -> None:
    async with run_server() as server:
        async with attach(server, "r", msgpack=msgpack, create=True) as (peer, _):
            await peer.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        hello = {"last_seq": 0, "epoch": None}
        async with attach(server, "r", msgpack=msgpack, **hello) as (peer, welcome):
            assert (welcome["resumed"], welcome["replay"]) == (True, 1)
            assert (await peer.recv())["event"] == token("a")


async def test_requests_with_null_id_key_and_limits_act_as_without(msgpack: bool) -> None:
    async with run_server() as server, attach(server, msgpack=msgpack) as (peer, welcome):
        assert welcome["max_batch_items"] >= 1000
        # Replies to requests with "id": null leave the id out, as for no id.
        assert await peer.request({"type": "ping", "id": None}, "pong") == {"type": "pong"}
        event = {"type": "event", "id": None, "key": None, "event": token("x")}
        assert await peer.request(event, "ack") == {"type": "ack", "seq": 1}
        assert await peer.request(event, "ack") == {"type": "ack", "seq": 2}  # no key: no dup
        state = {"type": "state", "id": None, "state": "active"}
        assert await peer.request(state, "ack") == {"type": "ack", "seq": 2}
        # 101 messages, then 1,001 events in all: one over each page's default limit.
        messages = [{"message": {"role": "user", "content": str(i)}} for i in range(101)]
        await peer.request({"type": "batch", "id": None, "items": messages}, "acks")
        tokens = [{"event": token(str(i)), "key": None} for i in range(1001 - 103)]
        await peer.request({"type": "batch", "items": tokens}, "acks")
        for history in (
            {"type": "history", "id": "h", "limit": None, "before": None},
            {"type": "history", "id": "h"},
        ):
            reply = await peer.request(history, "history")
            assert (len(reply["messages"]), reply["has_more"]) == (100, True)
            assert reply["messages"][0]["content"] == "1"  # the newest 100: before is the end
        for events in (
            {"type": "events", "id": "e", "after_seq": None, "limit": None},
            {"type": "events", "id": "e"},
        ):
            reply = await peer.request(events, "events")
            seqs = [record["seq"] for record in reply["events"]]
            assert (seqs[0], len(seqs), reply["last_seq"]) == (1, 1000, 1001)


@pytest.mark.durable
async def test_a_message_with_null_optional_fields_is_stored_as_one_without(
    msgpack: bool, tmp_path: Path
) -> None:
    nulls = dict.fromkeys(["id", "created_at", "tool_calls", "tool_call_id", "metadata"])
    sent = {"role": "assistant", "content": "hi", **nulls}
    bare = {"role": "assistant", "content": "hi"}
    async with (
        run_server(tmp_path) as server,
        attach(server, "m", msgpack=msgpack, create=True) as (peer, _),
        attach(server, "m", msgpack=msgpack) as (viewer, _),
    ):
        await peer.request({"type": "message", "id": 1, "message": sent}, "ack")
        await peer.request({"type": "message", "id": 2, "message": bare}, "ack")
        as_event = {"type": "message", "message": sent}  # an AgentEvent of type message
        await peer.request({"type": "event", "id": 3, "event": as_event}, "ack")
        items = [{"message": sent, "event": None, "key": None}, {"event": as_event}]
        await peer.request({"type": "batch", "id": 4, "items": items}, "acks")
        live = [(await viewer.recv_type("event"))["event"]["message"] for _ in range(5)]
        assert [without_server_fills(m) for m in live] == [bare] * 5  # no metadata, no nulls
        history = await peer.request({"type": "history", "id": "h"}, "history")
        assert [without_server_fills(m) for m in history["messages"]] == [bare] * 5
    async with run_server(tmp_path) as server:  # read back from the store, as stored
        status, body = await get(server, "/api/v1/sessions/m")
        assert status == 200 and [without_server_fills(m) for m in body["messages"]] == [bare] * 5
        status, body = await get(server, "/api/v1/sessions/m/events")
        stored = [record["event"]["message"] for record in body["events"]]
        assert [without_server_fills(m) for m in stored] == [bare] * 5
        async with attach(server, "m", msgpack=msgpack, last_seq=0) as (peer, welcome):
            assert (welcome["resumed"], welcome["replay"]) == (True, 5)
            replayed = [(await peer.recv_type("event"))["event"]["message"] for _ in range(5)]
            assert [without_server_fills(m) for m in replayed] == [bare] * 5
            history = await peer.request({"type": "history", "id": "h"}, "history")
            assert [without_server_fills(m) for m in history["messages"]] == [bare] * 5


async def test_events_with_null_optional_fields_are_stored_as_without(msgpack: bool) -> None:
    usage = {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": None}
    result = {"success": True, "content": None, "error": None}
    zeroed = {**usage, "prompt_tokens": 0, "total_tokens": 0}
    sent_and_stored = [
        ({"type": "complete", "usage": usage}, {"type": "complete", "usage": zeroed}),
        ({"type": "complete", "usage": None}, {"type": "complete"}),
        ({"type": "error", "message": "m", "code": None}, {"type": "error", "message": "m"}),
        (
            {"type": "tool_complete", "tool_call_id": "c", "result": result},
            {"type": "tool_complete", "tool_call_id": "c", "result": {**result, "content": ""}},
        ),
        (
            {"type": "tool_start", "tool_call_id": "c", "tool_name": "f", "arguments": None},
            {"type": "tool_start", "tool_call_id": "c", "tool_name": "f", "arguments": None},
        ),
        (
            {"type": "custom", "name": "n", "data": None},
            {"type": "custom", "name": "n", "data": None},
        ),
    ]
    async with (
        run_server() as server,
        attach(server, "e", msgpack=msgpack, create=True) as (peer, _),
        attach(server, "e", msgpack=msgpack) as (viewer, _),
    ):
        for sent, _ in sent_and_stored:
            await peer.request({"type": "event", "id": 1, "event": sent}, "ack")
        expected = [stored for _, stored in sent_and_stored]
        assert [(await viewer.recv_type("event"))["event"] for _ in expected] == expected
        reply = await peer.request({"type": "events", "id": "e"}, "events")
        assert [record["event"] for record in reply["events"]] == expected


async def test_null_stays_a_value_in_free_form_fields(msgpack: bool) -> None:
    message = {
        "role": "assistant",
        "content": "",
        "metadata": {"a": None, "b": [None]},
        "tool_calls": [{"id": "c", "name": "f", "arguments": None}],
    }
    async with run_server() as server, attach(server, msgpack=msgpack) as (peer, _):
        await peer.request({"type": "message", "id": 1, "message": message}, "ack")
        custom = {"type": "custom", "name": "n", "data": {"x": None}}
        await peer.request({"type": "event", "id": 2, "event": custom}, "ack")
        reply = await peer.request({"type": "events", "id": "e"}, "events")
        stored = [record["event"] for record in reply["events"]]
        assert without_server_fills(stored[0]["message"]) == message
        assert stored[1] == custom


REQUIRED_NULLS = [
    {"type": "event", "event": None},
    {"type": "event", "event": {"type": "token", "content": None}},
    {"type": "event", "event": {"type": None, "content": "x"}},
    {"type": "event", "event": {"type": "tool_error", "tool_call_id": None, "error": "e"}},
    {"type": "event", "event": {"type": "tool_complete", "tool_call_id": "c", "result": None}},
    {
        "type": "event",
        "event": {"type": "tool_complete", "tool_call_id": "c", "result": {"success": None}},
    },
    {"type": "event", "event": {"type": "custom", "name": None}},
    {"type": "event", "event": {"type": "state_change", "from": None, "to": "b"}},
    {"type": "message", "message": None},
    {"type": "message", "message": {"role": None, "content": "x"}},
    {"type": "message", "message": {"role": "user", "content": None}},
    {
        "type": "message",
        "message": {"role": "user", "content": "", "tool_calls": [{"id": None, "name": "f"}]},
    },
    {"type": "batch", "items": None},
    {"type": "batch", "items": [{"event": {"type": "token", "content": None}}]},
    {"type": "batch", "items": [{"event": None, "message": None}]},
    {"type": "state", "state": None},
    {"type": None},
]


async def test_a_required_field_sent_null_is_still_a_bad_request(msgpack: bool) -> None:
    async with run_server() as server, attach(server, msgpack=msgpack) as (peer, _):
        for number, frame in enumerate(REQUIRED_NULLS):
            error = await peer.request({**frame, "id": number}, "error")
            assert (error["code"], error.get("id")) == ("bad_request", number), (frame, error)
        await assert_nothing_appended(peer)


async def assert_nothing_appended(peer: Peer) -> None:
    reply = await peer.request({"type": "events", "id": "e"}, "events")
    assert (reply["events"], reply["last_seq"]) == ([], 0)
