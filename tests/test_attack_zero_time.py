"""A message whose ``created_at`` is ``0001-01-01T00:00:00Z`` gets the server's time, as
one without it does, on a real server over a real WebSocket, on every store
(tests/server_backends.py), in JSON and in MessagePack.

That instant is the zero value of Go's ``time.Time`` (and of .NET's
``DateTimeOffset``): Go's ``omitempty`` never leaves out a struct, so a Go client whose
Message has a ``CreatedAt time.Time`` sends it for every message it does not time. Kept
as sent, each such message was stored, listed and shown as created in the year 1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = [
    pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"]),
    pytest.mark.usefixtures("server_store"),
]

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def recent(text: str) -> bool:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return abs(datetime.now(UTC) - moment) < timedelta(hours=1)


async def test_the_zero_time_of_go_is_filled_in_as_an_absent_one(msgpack: bool) -> None:
    zero = {"role": "user", "content": "zero", "created_at": GO_ZERO_TIME}
    # The same instant at another offset is that zero time too; a microsecond later is
    # a time a publisher chose, kept as sent.
    shifted = {"role": "user", "content": "shifted", "created_at": "0001-01-01T01:00:00+01:00"}
    chosen = {"role": "user", "content": "chosen", "created_at": "0001-01-01T00:00:00.000001Z"}
    hello = {"create": True, "msgpack": msgpack}
    async with run_server() as server, attach(server, "go", **hello) as (peer, _):
        await peer.request({"type": "message", "id": 1, "message": zero}, "ack")
        items = [{"message": shifted}, {"event": {"type": "message", "message": chosen}}]
        await peer.request({"type": "batch", "id": 2, "items": items}, "acks")
        history = await peer.request({"type": "history", "id": 3}, "history")
        status, stored = await get(server, "/api/v1/sessions/go")
    assert status == 200
    for messages in (history["messages"], stored["messages"]):
        times = {m["content"]: m["created_at"] for m in messages}
        assert recent(times["zero"]) and recent(times["shifted"]), times
        assert times["chosen"] == "0001-01-01T00:00:00.000001Z", times
