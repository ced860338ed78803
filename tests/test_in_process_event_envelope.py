"""A peer's publish is held to the frame limit less the envelope of a frame of its event
(protocol/event_envelope.py), so that every frame of an event stored reaches a viewer
that reads frames of ``--max-frame-bytes`` (tests/test_event_envelope.py). The
in-process API (``SessionManager.append_events``, which embedding apps call on the
server's own manager) stored any event: one of nearly the frame limit reached every
viewer in a frame over it, which a client reading frames of that limit closed with
1009, and met again at each resume. The manager's append now makes the same check as
a publish (server/decode_charge.py ``over_frame_limit``): ValueError, nothing stored;
``add_message`` checks the message as sent, as a publish does.

A real server on an ephemeral port, its own manager, real WebSocket viewers of both
codecs that read frames of the server's limit at most."""

from __future__ import annotations

import msgspec
import pytest

from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.messages import Message, Role
from bamboo_session.protocol.models import AgentEvent, Custom, Token
from tests.reading_peers import reading_peer
from tests.support import run_server

LIMIT = 4096
MOST = LIMIT - EVENT_ENVELOPE_BYTES  # the largest event a publish may hold


def token_of(size: int) -> Token:
    """A token event of ``size`` bytes in JSON (control characters, 6 bytes each)."""
    room = size - len(b'{"type":"token","content":""}')
    return AgentEvent.token("\x01" * (room // 6) + "x" * (room % 6))


def floats_of(size: int) -> Custom:
    """A custom event of ``size`` bytes in MessagePack (floats: 9 bytes there, 4 in JSON)."""
    for text in range(size):
        event = AgentEvent.custom("n", {"f": [0.5] * 300, "t": "x" * text})
        data = {"type": "custom", "name": "n", "data": event.data}
        if len(msgspec.msgpack.encode(data)) == size:
            return event
    raise AssertionError(size)


@pytest.mark.parametrize("make", [token_of, floats_of], ids=["json", "msgpack"])
async def test_an_in_process_append_is_held_to_the_frame_limit(make: object) -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        viewers = [
            await reading_peer(server, msgpack, LIMIT, create=True) for msgpack in (False, True)
        ]
        manager = server.manager
        for items in ([(make(MOST + 1), None)], [(token_of(10), "k"), (make(LIMIT), None)]):  # type: ignore[operator]
            with pytest.raises(ValueError, match=rf"over the frame limit .*\({MOST}\)") as caught:
                await manager.append_events("s", items)
            assert ("item 1's event" in str(caught.value)) == (len(items) == 2)
        assert (await manager.get_metadata("s")).last_seq == 0  # type: ignore[union-attr]
        (appended,) = await manager.append_events("s", [(make(MOST), None)])  # type: ignore[operator]
        assert appended.seq == 1
        for viewer in viewers:  # reaches both viewers, live, within their limit
            assert (await viewer.recv_type("event"))["seq"] == 1
            await viewer.ws.close()


def message_of(size: int) -> Message:
    """A message without ``id`` and ``created_at`` whose event, as sent, is ``size`` bytes
    in JSON (and less in MessagePack)."""
    sent = len(b'{"type":"message","message":{"role":"user","content":""}}')
    return Message(Role.USER, "m" * (size - sent))


async def test_add_message_is_held_to_the_bound_a_publish_of_it_is() -> None:
    """``add_message`` filled in the message's ``id`` and ``created_at`` (69 bytes of
    JSON) before the check, which the envelope kept free of the limit has room for
    already: it refused a message 69 bytes sooner than a peer's publish of it."""
    async with run_server(max_frame_bytes=LIMIT) as server:
        viewers = [
            await reading_peer(server, msgpack, LIMIT, create=True) for msgpack in (False, True)
        ]
        publisher = await reading_peer(server, False, LIMIT)
        for size, stored in ((MOST + 1, False), (MOST, True)):
            message = message_of(size)
            frame = {"type": "message", "id": size, "message": msgspec.to_builtins(message)}
            reply = await publisher.request(frame, "ack" if stored else "error")
            assert reply["id"] == size and (stored or reply["code"] == "too_large"), reply
            if stored:
                appended = await server.manager.add_message("s", message)
                assert appended.seq == reply["seq"] + 1
            else:
                with pytest.raises(ValueError, match=rf"over the frame limit .*\({MOST}\)"):
                    await server.manager.add_message("s", message)
        for viewer in viewers:  # both reach both viewers, whole, within their limit
            for seq in (1, 2):
                event = await viewer.recv_type("event")
                assert event["seq"] == seq and event["event"]["message"]["id"], event
            await viewer.ws.close()
        await publisher.ws.close()
