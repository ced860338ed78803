"""Times with a finer fraction than a microsecond (protocol/time_fractions.py) read by
truncation, never rounded into the next second: a message's ``created_at`` in every
place a publish carries one, in both codecs (a MessagePack timestamp's nanoseconds
too), and the time parameters of ``GET /api/v1/sessions``, against a real server.
Before, ``2024-12-31T23:59:59.9999995Z`` was stored as ``2025-01-01T00:00:00Z``, and
``9999-12-31T23:59:59.9999995Z`` was refused (``bad_request``, HTTP 400)."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol.time_fractions import truncated, truncated_timestamp
from tests.support import attach, get, run_server

NEW_YEAR_EVE = "2024-12-31T23:59:59.9999995Z"
ITS_LAST_MICROSECOND = "2024-12-31T23:59:59.999999Z"
SENT_AND_READ = {
    NEW_YEAR_EVE: ITS_LAST_MICROSECOND,
    "2024-12-31T23:59:59.99999999999999999Z": ITS_LAST_MICROSECOND,
    "9999-12-31T23:59:59.9999995Z": "9999-12-31T23:59:59.999999Z",  # was out of range
    "2024-06-01T12:00:00.1234567+02:00": "2024-06-01T10:00:00.123456Z",
    "2024-06-01T12:00:00.0000009z": "2024-06-01T12:00:00Z",
}


def test_a_time_is_truncated_to_the_microsecond() -> None:
    assert truncated("2024-12-31T23:59:59.9999995Z") == ITS_LAST_MICROSECOND
    assert truncated("2024-12-31 23:59:59.1234567-01:30") == "2024-12-31 23:59:59.123456-01:30"
    for as_read in ("2024-12-31T23:59:59.999999Z", "2024-12-31T23:59:59Z", "soon", "1.1234567"):
        assert truncated(as_read) is None


def timestamp_64(seconds: int, nanos: int) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(-1, (nanos << 34 | seconds).to_bytes(8, "big"))


def test_a_messagepack_timestamp_is_truncated_to_the_microsecond() -> None:
    cut = truncated_timestamp(timestamp_64(1_700_000_000, 999_999_999))
    assert cut is not None and bytes(cut.data) == bytes(
        timestamp_64(1_700_000_000, 999_999_000).data
    )
    ext96 = msgspec.msgpack.Ext(
        -1, (1_999).to_bytes(4, "big") + (-1).to_bytes(8, "big", signed=True)
    )
    cut = truncated_timestamp(ext96)
    assert cut is not None and bytes(cut.data)[:4] == (1_000).to_bytes(4, "big")
    assert truncated_timestamp(timestamp_64(1_700_000_000, 5_000)) is None  # whole microseconds
    assert truncated_timestamp(timestamp_64(1, 10**9 + 1)) is None  # msgspec refuses it


def publishes(created_at: Any) -> dict[str, dict[str, Any]]:
    """Every place a publish carries a message's time, each a frame of one message."""
    message = {"role": "user", "content": "x", "created_at": created_at}
    return {
        "message": {"type": "message", "id": 1, "message": message},
        "event": {"type": "event", "id": 1, "event": {"type": "message", "message": message}},
        "batch": {
            "type": "batch",
            "id": 1,
            "items": [{"event": {"type": "token", "content": "t"}}, {"message": message}],
        },
    }


async def stored_time(
    server: Any, frame: dict[str, Any], *, msgpack: bool, session_id: str = "times"
) -> str:
    """The ``created_at`` of the message ``frame`` publishes, as the server stored it
    and as a viewer gets it live: the two must be the same."""
    async with (
        attach(server, session_id, create=True, msgpack=msgpack) as (publisher, _),
        attach(server, session_id, msgpack=msgpack) as (viewer, _),
    ):
        await publisher.send(frame)
        answer = await publisher.recv_type("acks" if frame["type"] == "batch" else "ack")
        assert answer["type"] in ("ack", "acks"), answer
        while (live := await viewer.recv_type("event"))["event"]["type"] != "message":
            pass
        history = await viewer.request({"type": "history", "id": 2}, "history")
    [stored] = history["messages"]
    assert live["event"]["message"]["created_at"] == stored["created_at"]
    return str(stored["created_at"])


@pytest.mark.parametrize("place", ["message", "event", "batch"])
@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_a_message_time_stays_in_its_second(place: str, msgpack: bool) -> None:
    async with run_server(store="memory://") as server:
        for index, (sent, read) in enumerate(SENT_AND_READ.items()):
            frame = publishes(sent)[place]
            time = await stored_time(server, frame, msgpack=msgpack, session_id=f"s{index}")
            assert time == read, sent


async def test_an_escaped_fraction_is_truncated_too() -> None:
    """A JSON string may escape any character: the time read is the same."""
    frame = json.dumps(publishes(NEW_YEAR_EVE)["message"]).replace(".", "\\u002e")
    async with run_server(store="memory://") as server:
        async with attach(server, "times", create=True) as (peer, _):
            await peer.ws.send(frame)
            await peer.recv_type("ack")
            history = await peer.request({"type": "history", "id": 2}, "history")
    assert history["messages"][0]["created_at"] == ITS_LAST_MICROSECOND


@pytest.mark.parametrize("place", ["message", "event", "batch"])
async def test_a_messagepack_timestamp_stays_in_its_second(place: str) -> None:
    new_year_eve = int(datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
    frame = publishes(timestamp_64(new_year_eve, 999_999_999))[place]
    async with run_server(store="memory://") as server:
        assert await stored_time(server, frame, msgpack=True) == ITS_LAST_MICROSECOND


async def test_a_listing_time_parameter_is_truncated() -> None:
    """``created_after`` is ``created_at >=``: a session created at .123456 is after
    .1234569 truncated (.123456), not rounded (.123457)."""
    async with run_server(store="memory://") as server:
        async with attach(server, "listed", create=True) as (_, welcome):
            created = datetime.fromisoformat(welcome["session"]["created_at"])
        after = created.strftime("%Y-%m-%dT%H:%M:%S.%f") + "9Z"
        listed = []
        for created_after in (after, "9999-12-31T23:59:59.9999995Z"):
            query = urllib.parse.urlencode({"created_after": created_after})
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 200, body
            listed.append([session["id"] for session in body["sessions"]])
    assert listed == [["listed"], []]
