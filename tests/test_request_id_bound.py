"""A request's ``id`` is the client's to choose, and every reply echoes it. It had no
length bound: a ``history`` request whose string id was nearly the frame limit was
answered with a page holding the id and a message, over ``--max-frame-bytes``, which a
client reading frames of that limit closed with 1009; and the envelope an event is
held within (protocol/event_envelope.py ``EVENT_ENVELOPE_BYTES``) counted an integer id
only, so a page of the largest event asked for with a string id was over it too. A
string id is now at most 128 characters (docs/protocol.md, Frames: general rules): a
longer one is an invalid id, ``bad_request`` without it, and the envelope counts the
longest allowed id in either codec. An ``error`` that quotes a value of the frame (an
unknown ``type``) quotes a bounded part of it.

A real server on an ephemeral port, real WebSocket peers of both codecs that read
frames of the server's limit at most."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.frames import MAX_ID_LENGTH
from tests.reading_peers import reading_peer
from tests.support import Peer, attach, run_server, stream_url

LIMIT = 4096
MOST = LIMIT - EVENT_ENVELOPE_BYTES  # the largest event a publish may hold
# The longest id in JSON: a control character is 6 bytes there (``\u0001``); the longest
# in MessagePack: a character of 4 bytes of UTF-8.
LONGEST_IDS = ["\x01" * MAX_ID_LENGTH, "\U0010ffff" * MAX_ID_LENGTH, -(2**63)]
SUBPROTOCOLS: dict[bool, Any] = {False: "bamboo.v1", True: "bamboo.v1.msgpack"}


def controls(length: int) -> str:
    """Text of ``length`` bytes in JSON, one byte a character in MessagePack."""
    return "\x01" * (length // 6) + "x" * (length % 6)


@pytest.mark.parametrize("msgpack", [False, True])
async def test_an_id_longer_than_the_bound_is_refused_and_not_echoed(msgpack: bool) -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        peer = await reading_peer(server, msgpack, LIMIT, create=True)
        message = {"role": "user", "content": "x" * 1000}
        assert (await peer.request({"type": "message", "message": message}, "ack"))["seq"] == 1
        longest = "i" * MAX_ID_LENGTH
        page = await peer.request({"type": "history", "id": longest}, "history")
        assert page["id"] == longest and len(page["messages"]) == 1
        for request_id in ("i" * (MAX_ID_LENGTH + 1), "i" * (LIMIT - 100)):
            await peer.send({"type": "history", "id": request_id})
            error = await peer.recv()
            assert (error["type"], error["code"]) == ("error", "bad_request"), error
            assert "id" not in error and "$.id" in error["message"], error
        await peer.send({"type": "hello", "id": "h" * (MAX_ID_LENGTH + 1)})  # a second one
        error = await peer.recv()
        assert (error["type"], error["code"], "id" in error) == ("error", "bad_request", False)
        assert (await peer.request({"type": "ping", "id": 7}, "pong"))["id"] == 7  # still open
        await peer.ws.close()


@pytest.mark.parametrize("msgpack", [False, True])
async def test_a_page_of_the_largest_event_fits_with_the_longest_id(msgpack: bool) -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        # MessagePack: 1 byte a control character
        publisher = await reading_peer(server, True, LIMIT, create=True)
        room = MOST - len('{"type":"token","content":""}')
        # The largest event in JSON (controls: 6 bytes each there), in MessagePack (plain
        # text: as long in both), and a message of nearly that much.
        for text in (controls(room), "x" * room):
            sent = {"type": "event", "event": {"type": "token", "content": text}}
            assert (await publisher.request(sent, "ack"))["type"] == "ack"
        message = {"role": "user", "content": "x" * (MOST - 200)}
        assert (await publisher.request({"type": "message", "message": message}, "ack"))["seq"] == 3
        reader = await reading_peer(server, msgpack, LIMIT)
        for request_id in LONGEST_IDS:
            for seq in (1, 2, 3):
                events = {"type": "events", "id": request_id, "after_seq": seq - 1, "limit": 1}
                page = await reader.request(events, "events")
                assert (page["id"], [e["seq"] for e in page["events"]]) == (request_id, [seq])
            page = await reader.request({"type": "history", "id": request_id}, "history")
            assert (page["id"], len(page["messages"])) == (request_id, 1)
        await reader.ws.close()
        await publisher.ws.close()


@pytest.mark.parametrize("msgpack", [False, True])
async def test_an_error_quoting_a_long_value_is_within_the_frame_limit(msgpack: bool) -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        peer = await reading_peer(server, msgpack, LIMIT, create=True)
        for frame in (
            {"type": "x" * (LIMIT - 200), "id": "i" * MAX_ID_LENGTH},
            {"type": "state", "state": "x" * (LIMIT - 200), "id": "i" * MAX_ID_LENGTH},
            {"type": "event", "event": {"type": "x" * (LIMIT - 200)}, "id": 3},
        ):
            await peer.send(frame)
            error = await peer.recv()
            assert (error["type"], error["code"], error["id"]) == (
                "error",
                "bad_request",
                frame["id"],
            )
            assert "…" in error["message"], error
        await peer.ws.close()


async def test_the_longest_id_is_echoed_by_every_reply() -> None:
    """At the bound, the id is an id like any other, in both codecs."""
    async with run_server(max_frame_bytes=LIMIT) as server:
        for msgpack in (False, True):
            async with attach(server, "s", create=True, msgpack=msgpack) as (peer, _):
                for request_id in LONGEST_IDS:
                    pong = await peer.request({"type": "ping", "id": request_id}, "pong")
                    assert pong["id"] == request_id


@pytest.mark.parametrize("msgpack", [False, True])
async def test_a_hello_whose_id_is_no_request_id_is_welcomed(msgpack: bool) -> None:
    """PROTOCOL.md's ``hello`` has no ``id``: there it is an unknown field, which a
    client may fill with anything and the server must ignore. This server reads one to
    echo it in an error about the hello; one it cannot echo (over the bound, or of
    another type) refused the hello with close 1008 (the bound made a string id of 129
    characters one). It is now left out; a second hello's error then has no id."""
    async with run_server(max_frame_bytes=LIMIT) as server:
        for request_id in ("h" * (MAX_ID_LENGTH + 1), 1.5, True, [1, "a"], {"a": 1}, 2**63):
            peer = await reading_peer(server, msgpack, LIMIT, create=True, id=request_id)
            await peer.send({"type": "hello", "id": request_id})
            error = await peer.recv()
            assert (error["type"], error["code"]) == ("error", "bad_request"), error
            assert "id" not in error and error["message"] == "hello was already received"
            await peer.ws.close()
        # Another bad field of such a hello refuses it, for that field, as before.
        ws = await connect(stream_url(server, "s"), subprotocols=[SUBPROTOCOLS[msgpack]])
        peer = Peer(ws, msgpack)
        await peer.send({"type": "hello", "id": 1.5, "role": "boss"})
        code, frames = await peer.closed()
        assert code == 1008 and "$.role" in frames[0]["message"] and "id" not in frames[0]
