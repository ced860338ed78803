"""A MessagePack publisher's events as JSON viewers get them: an event within the frame
limit in MessagePack can be 6 times that in JSON (a control character is ``\\u0001``),
one frame that no client with the usual limit (1 MiB, websockets' default) can read:
closed 1009, it resumed into the same frame for ever. Such a publish gets
``too_large``, nothing is stored, and viewers read on. A JSON publisher's event is
written again too, and can come out larger than its frame: ``1e15`` is stored as
``1000000000000000.0``, 4 bytes as 18."""

from __future__ import annotations

from typing import Any

from tests.support import Peer, attach, run_server, token

MIB = 1024 * 1024

CONTROL = "\x01"  # one byte in MessagePack, six in JSON


async def reply(peer: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``frame``, whatever its type (a presence aside)."""
    await peer.send(frame)
    while (answer := await peer.recv())["type"] == "presence":
        pass
    return answer


async def test_a_msgpack_publish_over_the_frame_limit_in_json_is_refused() -> None:
    async with run_server() as server, attach(server, "s1", create=True) as (viewer, _):
        async with attach(server, "s1", role="agent", msgpack=True) as (agent, _):
            wide = {"type": "token", "content": CONTROL * 1_000_000}  # 6 MB in JSON
            error = await reply(agent, {"type": "event", "id": 1, "event": wide})
            assert error["type"] == "error" and error["code"] == "too_large", error
            assert error["id"] == 1 and "6000029 bytes in JSON" in error["message"]
            message = {"role": "user", "content": CONTROL * 200_000}  # 1.2 MB in JSON
            items = [{"event": token("fine")}, {"message": message}]
            error = await reply(agent, {"type": "batch", "id": 2, "items": items})
            assert error["type"] == "error" and error["code"] == "too_large", error
            assert error["id"] == 2 and error["message"].startswith("item 1's event is")
            # Within the limit in JSON (1,020,029 bytes): stored, and read by a client
            # that takes frames of 1 MiB at most, as the one above is.
            fits = {"type": "token", "content": CONTROL * 170_000}
            ack = await reply(agent, {"type": "event", "id": 3, "event": fits})
            assert ack == {"type": "ack", "id": 3, "seq": 1}  # nothing else was stored
            event = await viewer.recv_type("event")
            assert event["seq"] == 1 and event["event"] == fits


async def test_a_json_publish_whose_event_is_stored_over_the_frame_limit_is_refused() -> None:
    """16,000 numbers written ``1e15`` (4 bytes, 18 as stored) in a frame of just under
    1 MiB: its event is 1.2 MB in JSON as every JSON viewer would get it (one with the
    usual limit closed it with 1009, and met it again at each resume)."""
    numbers = ",".join(["1e15"] * 16_000)
    head = '{"type":"event","id":1,"event":{"type":"custom","name":"n","data":{"numbers":['
    filler = "x" * (MIB - 100 - len(head) - len(numbers))
    frame = f'{head}{numbers}],"text":"{filler}"}}}}}}'
    assert len(frame) < MIB
    async with run_server() as server, attach(server, "s1", create=True) as (viewer, _):
        async with attach(server, "s1", role="agent") as (agent, _):
            await agent.ws.send(frame)
            while (error := await agent.recv())["type"] == "presence":
                pass
            assert error["type"] == "error" and error["code"] == "too_large", error
            assert error["id"] == 1 and "bytes in JSON" in error["message"]
            ack = await reply(agent, {"type": "event", "id": 3, "event": token("fine")})
            assert ack == {"type": "ack", "id": 3, "seq": 1}  # nothing else was stored
            event = await viewer.recv_type("event")
            assert event["seq"] == 1 and event["event"] == token("fine")


def floats(text_bytes: int) -> dict[str, Any]:
    """An event of 16,000 small floats, 4 bytes each in JSON (``0.5,``) and 9 in
    MessagePack (80,000 bytes more), and a text of ``text_bytes``."""
    data = {"numbers": [0.5] * 16_000, "text": "x" * text_bytes}
    return {"type": "custom", "name": "n", "data": data}


async def test_a_publish_whose_event_is_over_the_frame_limit_in_msgpack_is_refused() -> None:
    """An event within the frame limit in JSON but over it in MessagePack, as a
    MessagePack viewer gets it (1,031,635 bytes in JSON, 1,111,623 in MessagePack),
    published by a JSON peer. A MessagePack viewer with the usual limit (1 MiB) closed
    its frame with 1009, and met it again at each resume."""
    over = floats(MIB - 81_000)  # its frame (json.dumps: "0.5, ") within the limit
    async with (
        run_server() as server,
        attach(server, "s1", create=True, msgpack=True) as (viewer, _),
    ):
        async with attach(server, "s1", role="agent") as (agent, _):
            error = await reply(agent, {"type": "event", "id": 1, "event": over})
            assert error["type"] == "error" and error["code"] == "too_large", error
            assert "1111623 bytes in MessagePack" in error["message"], error
        async with attach(server, "s1", role="agent") as (agent, _):
            fits = floats(MIB - 181_000)  # 100,000 bytes less: stored, and read
            ack = await reply(agent, {"type": "event", "id": 3, "event": fits})
            assert ack == {"type": "ack", "id": 3, "seq": 1}  # nothing else was stored
            event = await viewer.recv_type("event")
            assert event["seq"] == 1 and event["event"] == fits
