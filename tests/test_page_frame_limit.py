"""A page of several messages or events is one frame, and a viewer reads frames of at
most ``--max-frame-bytes`` (websockets' ``max_size``, the contract's limit). The page
was bounded by ``--max-page-bytes`` of its items as stored (JSON), not by its frame:
each record's ``seq`` and ``ts`` and, for a MessagePack viewer, every float written
again in 9 bytes took a page of items within the page budget over the frame limit
(with the defaults, 1,000 events of 1 KiB: some 50 KB over), and the viewer closed
1009, reconnected and asked for the same page again, for ever.

A real server on an ephemeral port, real WebSocket viewers that read frames of the
server's limit at most, reading the whole log and the whole history page by page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reading_peers import reading_peer
from tests.support import Peer, attach, run_server

LIMIT = 4096


async def whole_log(viewer: Peer) -> list[int]:
    """Every seq of the log, read with ``events`` pages until ``last_seq``."""
    seqs: list[int] = []
    while True:
        request = {"type": "events", "id": len(seqs), "after_seq": seqs[-1] if seqs else 0}
        page = await viewer.request(request, "events")
        seqs += [record["seq"] for record in page["events"]]
        if not page["events"] or seqs[-1] >= page["last_seq"]:
            return seqs


async def whole_history(viewer: Peer, count: int) -> list[str]:
    """Every message's content, read with ``history`` pages from the end back."""
    contents: list[str] = []
    before = count
    while True:
        request = {"type": "history", "id": before, "before": before}
        page = await viewer.request(request, "history")
        contents[:0] = [message["content"] for message in page["messages"]]
        before -= len(page["messages"])
        if not page["has_more"]:
            return contents


def floats_event(index: int) -> dict[str, Any]:
    """About 700 bytes in JSON and twice that in MessagePack (a float is 4 bytes in
    JSON, ``0.5,``, and 9 there): a page of JSON bytes holds twice its frame's room."""
    return {"type": "custom", "name": str(index), "data": [0.5] * 150}


@pytest.mark.parametrize("msgpack", [False, True])
async def test_a_viewer_reads_every_page_within_the_frame_limit(msgpack: bool) -> None:
    count = 12
    async with run_server(max_frame_bytes=LIMIT, max_page_bytes=LIMIT) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, _):
            for index in range(count):
                if index % 2:
                    frame = {"type": "event", "id": index, "event": floats_event(index)}
                else:
                    content = f"{index} " + "x" * 1500
                    message = {"role": "assistant", "content": content}
                    frame = {"type": "message", "id": index, "message": message}
                assert (await agent.request(frame, "ack"))["seq"] == index + 1
        viewer = await reading_peer(server, msgpack, LIMIT)
        assert await whole_log(viewer) == list(range(1, count + 1))
        contents = await whole_history(viewer, count // 2)
        assert [content.split()[0] for content in contents] == [str(i) for i in range(0, count, 2)]
        await viewer.close()
