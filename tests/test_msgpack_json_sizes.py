"""A MessagePack publisher's events as JSON viewers get them: an event within the frame
limit in MessagePack can be 6 times that in JSON (a control character is ``\\u0001``),
one frame that no client with the usual limit (1 MiB, websockets' default) can read:
closed 1009, it resumed into the same frame for ever. Such a publish gets
``too_large``, nothing is stored, and viewers read on."""

from __future__ import annotations

from typing import Any

from tests.support import Peer, attach, run_server, token

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
