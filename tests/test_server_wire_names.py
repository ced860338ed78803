"""Frames that are valid JSON syntax but odd, as docs/protocol.md's "Frames: general
rules" describes them: a name given twice in one object is read as its last
occurrence (at every level, MessagePack maps too), except a `type` given two different
values, which is `bad_request`; a lone UTF-16 surrogate escape makes the frame one that
cannot be decoded. A client author cannot guess these (RFC 8259 leaves both open), so
they are pinned here against a real server."""

from __future__ import annotations

import msgspec

from tests.support import attach, run_server, token

SESSION = "repeated-names"


async def test_a_name_given_twice_is_read_as_its_last_occurrence() -> None:
    async with (
        run_server() as server,
        attach(server, SESSION, create=True) as (publisher, _),
        attach(server, SESSION) as (viewer, _),
    ):
        await publisher.ws.send(
            '{"type": "event", "id": 1, "key": "first", "key": "last",'
            ' "event": {"type": "token", "content": "a", "content": "b"}}'
        )
        assert (await publisher.recv_type("ack"))["seq"] == 1
        # The key kept is the last one: a retry with it is the duplicate, not one with the first.
        last_again = {"type": "event", "id": 2, "key": "last", "event": token("again")}
        ack = await publisher.request(last_again, "ack")
        assert ack["seq"] == 1 and ack.get("duplicate") is True, ack
        first_again = {"type": "event", "id": 3, "key": "first", "event": token("new")}
        ack = await publisher.request(first_again, "ack")
        assert ack["seq"] == 2 and "duplicate" not in ack, ack
        await publisher.ws.send(
            '{"type": "event", "id": 4, "event": {"type": "custom", "name": "n",'
            ' "data": {"a": 1, "a": 2}}}'
        )
        assert (await publisher.recv_type("ack"))["seq"] == 3
        seen = [(await viewer.recv_type("event"))["event"] for _ in range(3)]
        assert seen == [
            {"type": "token", "content": "b"},
            {"type": "token", "content": "new"},
            {"type": "custom", "name": "n", "data": {"a": 2}},
        ]


async def test_a_name_given_twice_in_a_msgpack_map_is_read_as_its_last_occurrence() -> None:
    # msgspec writes no repeated keys, so the map is spelled out: fixmap of 4 entries,
    # "key" twice ("first" then "last").
    frame = (
        b"\x84\xa4type\xa5event\xa3key\xa5first\xa3key\xa4last"
        + b"\xa5event"
        + msgspec.msgpack.encode(token("mp"))
    )
    async with (
        run_server() as server,
        attach(server, SESSION, create=True, msgpack=True) as (peer, _),
    ):
        await peer.ws.send(frame)
        assert (await peer.recv_type("ack"))["seq"] == 1
        retry = {"type": "event", "key": "last", "event": token("again")}
        assert (await peer.request(retry, "ack")).get("duplicate") is True


async def test_a_type_given_two_values_is_a_bad_request_one_value_twice_is_not() -> None:
    async with run_server() as server, attach(server, SESSION, create=True) as (peer, _):
        await peer.ws.send('{"type": "event", "type": "ping", "id": 5}')
        error = await peer.recv_type("error")
        assert error["code"] == "bad_request" and error.get("id") == 5, error
        await peer.ws.send(
            '{"type": "event", "id": 6, "event": {"type": "token", "type": "thinking",'
            ' "content": "x"}}'
        )
        error = await peer.recv_type("error")
        assert error["code"] == "bad_request" and error.get("id") == 6, error
        await peer.ws.send('{"type": "ping", "type": "ping", "id": 7}')
        assert (await peer.recv_type("pong"))["id"] == 7


async def test_a_lone_surrogate_escape_is_a_frame_that_cannot_be_decoded() -> None:
    async with (
        run_server() as server,
        attach(server, SESSION, create=True) as (publisher, _),
        attach(server, SESSION) as (viewer, _),
    ):
        token = '{"type": "event", "id": 8, "event": {"type": "token", "content": "%s"}}'
        custom = '{"type": "event", "id": 8, "event": {"type": "custom", "name": "n", "data": %s}}'
        frames = [token % content for content in ("\\ud800", "\\udfffx", "a\\ud83d")]
        # A high half alone in a key, or before an escaped backslash: msgspec words
        # these otherwise ("unexpected end of escaped utf-16 surrogate pair").
        frames += [
            '{"type": "event", "id": 8, "key": "k\\ud800", "event": {"type": "token"}}',
            custom % '{"\\ud800": 1}',
            custom % '{"a\\udbff\\\\u0041": 1}',
            token % "\\ud800\\\\u0041",
        ]
        for frame in frames:
            await publisher.ws.send(frame)
            error = await publisher.recv_type("error")
            # Not decoded at all, so not even the frame's id is read.
            assert error["code"] == "bad_request" and "id" not in error, error
            # Named as what it is (msgspec says a lone high half is "truncated").
            assert "invalid utf-16 surrogate pair" in error["message"], error
        # An escaped backslash before "ud800" is text, and a frame cut short is that.
        await publisher.ws.send(
            '{"type": "event", "id": 8, "event": {"type": "token", "content": "\\\\ud800"'
        )
        error = await publisher.recv_type("error")
        assert error["message"] == "malformed frame: Input data was truncated", error
        # A whole pair is the character it encodes; the connection stayed open.
        await publisher.ws.send(
            '{"type": "event", "id": 9, "event": {"type": "token", "content": "\\ud83d\\ude00"}}'
        )
        assert (await publisher.recv_type("ack"))["seq"] == 1
        event = await viewer.recv_type("event")
        assert event["seq"] == 1 and event["event"]["content"] == "\U0001f600"
