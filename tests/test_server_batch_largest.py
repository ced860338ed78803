"""The largest batch a server may allow (``--max-batch-items 10000``) on a real server:
every item is checked and normalized as its own frame would be, the last as the first
(docs/protocol.md, "Extension: batch publish"), though the decoder passes over the
items that have nothing to check (a token) without looking further."""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol.frames import MAX_BATCH_ITEMS
from tests.support import Peer, attach, run_server, token

# A batch of 10,000 items costs its peer 10 MiB of byte rate (docs/protocol.md, Byte
# rate), which would stop the server reading its next frame for seconds: off here.
UNPACED = {"max_batch_items": MAX_BATCH_ITEMS, "rate_limit_bytes": 0}


def largest_batch(last: dict[str, Any]) -> list[dict[str, Any]]:
    """MAX_BATCH_ITEMS items, mostly tokens, a message and a custom event every
    hundred, and ``last`` at the end."""
    items: list[dict[str, Any]] = []
    for index in range(MAX_BATCH_ITEMS - 1):
        if index % 100 == 1:
            sent_at = "2026-05-01T13:00:00+01:00"  # taken as 12:00 UTC
            message = {"role": "assistant", "content": str(index), "created_at": sent_at}
            items.append({"message": message})
        elif index % 100 == 2:
            items.append({"event": {"type": "custom", "name": "n", "data": {"i": [index]}}})
        else:
            items.append({"event": token(str(index)), "key": f"k{index}"})
    return [*items, last]


async def history_times(peer: Peer) -> set[str]:
    reply = await peer.request({"type": "history", "id": "h", "limit": 1000}, "history")
    return {message["created_at"] for message in reply["messages"]}


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_the_largest_batch_is_taken_whole_its_times_in_utc(msgpack: bool) -> None:
    last_message = {"role": "user", "content": "end", "created_at": "2026-05-01T14:00:00+02:00"}
    batch = {"type": "batch", "id": 1, "items": largest_batch({"message": last_message})}
    async with (
        run_server(**UNPACED) as server,
        attach(server, "largest", create=True, msgpack=msgpack) as (peer, _),
    ):
        acks = await peer.request(batch, "acks")
        assert acks["seqs"] == list(range(1, MAX_BATCH_ITEMS + 1))
        assert await history_times(peer) == {"2026-05-01T12:00:00Z"}
        last = await peer.request({"type": "events", "id": 2, "after_seq": 9999}, "events")
        assert last["events"][0]["event"]["message"]["created_at"] == "2026-05-01T12:00:00Z"


BAD_LAST_ITEMS = [
    ({"event": {"type": "custom", "name": "n", "data": {"x": b"2"}}}, "value not carried"),
    (
        {
            "event": {
                "type": "tool_start",
                "tool_call_id": "t",
                "tool_name": "n",
                "arguments": {1: 2},
            }
        },
        "object key",
    ),
    (
        {"message": {"role": "user", "content": "", "created_at": "9999-12-31T23:59:59-01:00"}},
        "created_at out of range",
    ),
    ({"event": token("t"), "message": {"role": "user", "content": ""}}, "exactly one of"),
]


@pytest.mark.parametrize(("last", "says"), BAD_LAST_ITEMS)
async def test_the_largest_batch_is_refused_for_its_last_item(
    last: dict[str, Any], says: str
) -> None:
    batch = {"type": "batch", "id": "b", "items": largest_batch(last)}
    async with (
        run_server(**UNPACED) as server,
        attach(server, "refused", create=True, msgpack=True) as (peer, _),
    ):
        error = await peer.request(batch, "error")
        assert (error["code"], error["id"]) == ("bad_request", "b"), error
        assert error["message"].startswith(f"items[{MAX_BATCH_ITEMS - 1}]: "), error
        assert says in error["message"], error
        assert (await peer.request({"type": "events", "id": 2}, "events"))["events"] == []
