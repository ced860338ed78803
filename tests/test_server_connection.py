"""One connection end to end: the handshake (paths, subprotocols, hello and its
deadline), and how frames are read: bad ones get bad_request and the connection
stays, oversized ones close 1009, MessagePack carries the same objects."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.instances import eventually
from tests.support import attach, open_peer, run_server, stream_url, token


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/stream/bad%20id", 400),
        ("/api/v1/stream/..", 400),
        ("/elsewhere", 404),
        # Everything after /api/v1/stream/ is the id: these are bad ids, not other paths.
        ("/api/v1/stream/", 400),
        ("/api/v1/stream/a/b", 400),
    ],
)
async def test_bad_paths_are_refused_before_the_upgrade(path: str, status: int) -> None:
    async with run_server() as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=5):
                pass
        assert refused.value.response.status_code == status


async def test_the_id_is_percent_decoded_and_a_query_string_ignored() -> None:
    async with run_server() as server:
        url = f"ws://127.0.0.1:{server.port}/api/v1/stream/a%2Db?user_id=q"
        async with connect(url, subprotocols=["bamboo.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "hello", "create": True}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["session"]["id"] == "a-b" and welcome["session"]["user_id"] is None


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["chat.v9", "bamboo.v1.msgpack", "bamboo.v1"], "bamboo.v1.msgpack"),
        (["bamboo.v1", "bamboo.v1.msgpack"], "bamboo.v1"),
    ],
)
async def test_of_several_subprotocols_the_first_offered_that_the_server_speaks_is_chosen(
    offered: list[str], chosen: str
) -> None:
    async with (
        run_server() as server,
        connect(stream_url(server), subprotocols=offered, open_timeout=5) as ws,  # type: ignore[arg-type]
    ):
        assert ws.subprotocol == chosen


@pytest.mark.parametrize(
    "first",
    [b'{"type": "ping", "id": 1}', b"not json", b'{"type": "hello", "last_seq": "x"}', b"[]"],
)
async def test_first_frame_must_be_a_valid_hello(first: bytes) -> None:
    async with run_server() as server, open_peer(server) as peer:
        await peer.ws.send(first.decode())
        code, frames = await peer.closed()
        assert code == 1008
        assert [f["type"] for f in frames] == ["error"]
        assert frames[0]["code"] == "bad_request"


async def test_no_hello_in_time_closes_4408() -> None:
    async with run_server(hello_timeout=0.2) as server, open_peer(server) as peer:
        code, _ = await peer.closed()
        assert code == 4408


async def test_second_hello_is_a_bad_request_and_the_connection_stays() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        error = await peer.request({"type": "hello", "id": "h2"}, "error")
        assert error["code"] == "bad_request" and error["id"] == "h2"
        assert (await peer.request({"type": "ping", "id": "p"}, "pong")) == {
            "type": "pong",
            "id": "p",
        }


@pytest.mark.parametrize(
    ("frame", "request_id"),
    [
        ({"type": "launch", "id": 5}, 5),
        ({"type": "event", "id": 6}, 6),
        ({"type": "event", "id": 7, "event": {"type": "token", "content": 3}}, 7),
        ({"type": "event", "id": 8, "event": {"type": "warp"}}, 8),
        ({"type": "event", "id": 9, "event": token("x"), "key": "k" * 129}, 9),
        ({"type": "history", "id": 10, "limit": 0}, 10),
        ({"type": "state", "id": 11, "state": "expired"}, 11),
        ({"type": "events", "id": [1]}, None),
    ],
)
async def test_bad_frames_get_bad_request_and_the_connection_stays(
    frame: dict[str, object], request_id: object
) -> None:
    async with run_server() as server, attach(server) as (peer, _):
        error = await peer.request(frame, "error")
        assert error["code"] == "bad_request" and error["message"]
        assert error.get("id") == request_id
        assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1


async def test_unknown_fields_are_ignored() -> None:
    async with run_server() as server, attach(server, extra_field=1) as (peer, _):
        ack = await peer.request(
            {"type": "event", "id": 1, "event": {**token("a"), "x": 1}, "y": [2]}, "ack"
        )
        assert ack["seq"] == 1


async def test_frame_over_the_limit_closes_1009() -> None:
    async with run_server(max_frame_bytes=4096) as server, attach(server) as (peer, _):
        await peer.send({"type": "event", "id": 1, "event": token("x" * 5000)})
        code, _ = await peer.closed()
        assert code == 1009


async def test_a_message_over_the_limit_in_fragments_under_it_closes_1009() -> None:
    # The limit bounds the reassembled message, not each fragment (docs/protocol.md).
    async with run_server(max_frame_bytes=4096) as server, attach(server) as (peer, _):
        frame = json.dumps({"type": "event", "id": 1, "event": token("x" * 5000)})
        with contextlib.suppress(ConnectionClosed):
            await peer.ws.send([frame[:3000], frame[3000:]])  # sent as two fragments
        code, _ = await peer.closed()
        assert code == 1009


async def test_msgpack_carries_the_same_objects() -> None:
    async with run_server() as server, attach(server, msgpack=True) as (agent, welcome):
        assert welcome["session"]["state"] == "active"
        session_id = welcome["session"]["id"]
        async with (
            attach(server, session_id) as (json_viewer, _),
            attach(server, session_id, msgpack=True) as (mp_viewer, _),
        ):
            event = {"type": "custom", "name": "n", "data": {"a": [1, 2.5, None, "x"]}}
            ack = await agent.request({"type": "event", "id": 1, "event": event}, "ack")
            from_json = await json_viewer.recv_type("event")
            from_msgpack = await mp_viewer.recv_type("event")
            assert ack["seq"] == from_json["seq"] == from_msgpack["seq"]
            assert from_json == from_msgpack and from_json["event"] == event


async def test_huge_integers_are_refused_in_json() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        await peer.ws.send(
            '{"type":"event","id":1,"event":{"type":"custom","name":"n","data":1' + "0" * 30 + "}}"
        )
        error = await peer.recv_type("error")
        assert error["code"] == "bad_request" and error["id"] == 1


async def test_offering_no_subprotocol_gets_json() -> None:
    async with run_server() as server, connect(stream_url(server), open_timeout=5) as ws:
        assert ws.subprotocol is None
        await ws.send(json.dumps({"type": "hello"}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome"


def writer_tasks() -> list[asyncio.Task[object]]:
    """The connections' writer tasks running in this process (server/connection.py)."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("writer:")]


async def test_a_connection_runs_a_writer_only_while_it_has_a_replay_to_send() -> None:
    # An idle connection holds no task to write with (about 1.1 KiB of each): its
    # welcome and live events go straight to the socket; a resume's replay, read in
    # pages, starts a writer, which ends once the replay is sent.
    async with run_server() as server, attach(server, "w1", create=True) as (agent, welcome):
        for n in range(3):
            await agent.request({"type": "event", "id": n, "event": token(str(n))}, "ack")
        async with attach(server, "w1", last_seq=0, epoch=welcome["epoch"]) as (viewer, back):
            assert back["resumed"] and back["replay"] == 3
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(3)] == [1, 2, 3]
            await eventually(lambda: not writer_tasks())
            await agent.request({"type": "event", "id": 3, "event": token("3")}, "ack")
            assert (await viewer.recv_type("event"))["seq"] == 4
            assert not writer_tasks()
            assert (await viewer.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"
        assert not writer_tasks()
