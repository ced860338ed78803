"""A ``batch``'s reply, ``acks``, holds a seq for every item (and the index of every
duplicate): at seqs of 19 digits and items as small as an item can be, could it be
over the frame limit its batch was within? No: the batch frame is bounded by
``--max-frame-bytes`` (websockets' ``max_size``, and ``welcome.max_batch_bytes``), and
its ``acks`` is always shorter, in both codecs, whatever the count of items. Per item:

- JSON: the smallest item is ``{"event":{"type":"complete"}},`` (30 bytes with its
  comma); its seq is at most ``9223372036854775807,`` (20). A duplicate needs a key,
  at least ``,"key":""`` (9 bytes more), and adds its index to ``duplicates``, at
  most ``9999,`` (5; a batch holds at most 10,000 items). So an item's answer is 10
  bytes shorter than the item at least.
- MessagePack: the smallest item is 22 bytes (a map of ``event``, a map of ``type``:
  ``complete``), its seq 9 (``0xcf`` and 8); a key is 5 bytes more (``key``, ``""``),
  an index 3 at most (``0xcd`` and 2). At least 10 bytes shorter too.

Around them, the request's ``{"type":"batch","items":[…]}`` is 27 bytes (18 and an
array's header in MessagePack), the reply's ``{"type":"acks","seqs":[…]}`` 25 (16 and
one), and its ``,"duplicates":[…]`` 16 more (12 to 14) when there are any, which the
duplicate among the items saves alone (14 bytes at least: 39 and 25; 15: 27 and 12).
The ``id`` is echoed as the request had it, never longer (the server writes the
shortest form of either codec). So the batch's own limits (``--max-batch-items``) need
not be lowered for its reply: the frame limit is the bound. (At 4 KiB here: 109 fresh
items, a frame of 4,072 bytes of JSON, answered in 2,980; 84 duplicates, 4,078 in
2,735; in MessagePack 161 items, 4,081 in 1,986.)

The worst cases built: a real server on an ephemeral port whose session's seqs are
of 19 digits (its SQLite store's row set so), batches of the smallest items that fill
a frame of the limit, all fresh, all duplicates but the first, and half and half, with
the longest id of each codec; real WebSocket peers of both codecs that read frames of
the server's limit at most."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session
from tests.support import run_server, stream_url

LIMIT = 4096
LAST_SEQ = 2**63 - 1 - 10_000  # the seqs this session's appends get: 19 digits each
SMALLEST = {"event": {"type": "complete"}}
SMALLEST_DUPLICATE = {"event": {"type": "complete"}, "key": ""}


async def make_store(path: Path) -> str:
    url = f"sqlite://{path}"
    async with await open_storage(url, cleanup_interval=None) as store:
        await store.create_session(Session.new("s"))
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE sessions SET last_seq = ? WHERE id = 's'", (LAST_SEQ,))
    db.close()
    return url


def encode(frame: dict[str, Any], msgpack: bool) -> bytes | str:
    return msgspec.msgpack.encode(frame) if msgpack else json.dumps(frame, separators=(",", ":"))


def fill(items: list[dict[str, Any]], request_id: Any, msgpack: bool) -> dict[str, Any]:
    """The batch of the most of ``items``, taken round, whose frame is within LIMIT."""
    batch: dict[str, Any] = {"type": "batch", "id": request_id, "items": []}
    while True:
        batch["items"].append(items[len(batch["items"]) % len(items)])
        if len(encode(batch, msgpack)) > LIMIT:
            batch["items"].pop()
            return batch


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_the_acks_of_the_fullest_batch_of_the_smallest_items_is_within_the_limit(
    msgpack: bool, tmp_path: Path
) -> None:
    url = await make_store(tmp_path / "store.db")
    # The longest id of each codec: 6 bytes a character of JSON, 4 of MessagePack.
    request_id = ("\U0010ffff" if msgpack else "\x01") * 128
    subprotocol = "bamboo.v1.msgpack" if msgpack else "bamboo.v1"
    async with (
        run_server(store=url, max_frame_bytes=LIMIT) as server,
        connect(stream_url(server, "s"), subprotocols=[subprotocol], max_size=LIMIT) as ws,  # type: ignore[list-item]
    ):
        await ws.send(encode({"type": "hello"}, msgpack))
        welcome = (
            msgspec.json.decode(await ws.recv())
            if not msgpack
            else msgspec.msgpack.decode(await ws.recv())
        )
        assert (welcome["type"], welcome["last_seq"]) == ("welcome", LAST_SEQ)
        shapes = ([SMALLEST], [SMALLEST_DUPLICATE], [SMALLEST, SMALLEST_DUPLICATE])
        for shape in shapes:
            batch = fill(shape, request_id, msgpack)
            sent = encode(batch, msgpack)
            await ws.send(sent)
            data = await asyncio.wait_for(ws.recv(), 10)  # closed 1009 if over LIMIT
            acks = msgspec.msgpack.decode(data) if msgpack else json.loads(data)
            assert (acks["type"], acks["id"]) == ("acks", request_id), acks
            assert len(acks["seqs"]) == len(batch["items"]) > 50
            assert all(len(str(seq)) == 19 for seq in acks["seqs"])
            if shape != [SMALLEST]:
                assert acks["duplicates"], acks
            size = len(data.encode() if isinstance(data, str) else data)
            assert size < len(sent) <= LIMIT
