"""A request waiting in a session's queue weighs what its strings hold decoded, not only
its bytes: a Python str is as wide as its widest character, so a 900 KB content of
ASCII with one emoji holds 3.6 MB decoded. Weighed by its bytes, such requests held the
session's queue bound in bytes (``--inbox-bytes``) and the memory budget 4 times over
while the store was slow (Codec.decode_request, protocol/free_form.py
``held_by_strings``).

A real ``bamboo-session serve`` (its RSS read from /proc) on a real redis-server that is
stopped (SIGSTOP: appends wait on it), peers publishing such messages to one session;
then the store comes back and every one of them is acknowledged, as a CJK client's are.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.protocol.codec import JSON, MSGPACK
from tests.memory_support import MIB
from tests.redis_server import RedisServer, prefix_for
from tests.replay_support import metric
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.store_stalls_support import frozen
from tests.test_server_lifecycle import eventually

CONTENT = "x" * 900_000 + "\N{GRINNING FACE}"  # 0.9 MB of JSON, 3.6 MB decoded
INBOX_BYTES = 8 * MIB  # --inbox-bytes (its default)
PEERS = 4
FRAMES = 6  # per peer: 24 of them would hold 86 MB decoded
WAIT = 60.0  # seconds for a condition on a loaded machine


def rss(pid: int) -> int:
    """The process's resident bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def buffered(server: ServerProcess) -> float:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as answer:
        return metric(answer.read().decode(), "bamboo_buffered_bytes")


async def publisher(server: ServerProcess, create: bool = False) -> ClientConnection:
    ws = await connect(server.url("wide"), max_size=None, open_timeout=WAIT)
    await ws.send(json.dumps({"type": "hello", "create": create}))
    assert json.loads(await ws.recv())["type"] == "welcome"
    return ws


async def acked(ws: ClientConnection, ids: set[int]) -> None:
    """Waits for the ``ack`` of each of ``ids``."""
    async with asyncio.timeout(WAIT):
        while ids:
            frame = json.loads(await ws.recv())
            if frame.get("id") in ids:
                assert frame["type"] == "ack", frame
                ids.discard(frame["id"])


def message(request_id: int, content: str) -> str:
    body = {"role": "user", "content": content}
    # As most clients send it: its emoji escaped (\\ud83d\\ude00), CJK as UTF-8.
    escaped = content.isascii() or max(content) > "\uffff"
    frame = {"type": "message", "id": request_id, "message": body}
    return json.dumps(frame, ensure_ascii=escaped)


async def test_requests_queued_on_a_stopped_store_hold_their_bound_decoded(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    flags = ("--store", redis.url(prefix=prefix_for(tmp_path)))
    # Each peer is sent the others' messages too: a send queue to hold them all.
    flags += ("--inbox-bytes", str(INBOX_BYTES), "--send-queue-bytes", str(64 * MIB))
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    try:
        await server.start_in_loop()
        assert server.proc is not None
        peers = [await publisher(server, create=not index) for index in range(PEERS)]
        before = rss(server.proc.pid)
        with frozen(redis):
            sends = [
                asyncio.create_task(peer.send(message(sent, CONTENT)))
                for sent in range(FRAMES)
                for peer in peers
            ]
            # The session's queue at its bound (or past it by the one always taken).
            await eventually(lambda: buffered(server) >= INBOX_BYTES, WAIT)
            grown = rss(server.proc.pid) - before
        await asyncio.gather(*sends)
        await asyncio.gather(*(acked(peer, set(range(FRAMES))) for peer in peers))
        # A CJK client's messages are taken as they come (weighed 2 bytes a character).
        cjk = "\N{CJK UNIFIED IDEOGRAPH-4E2D}" * 300_000  # 0.9 MB of UTF-8
        await peers[0].send(message(FRAMES, cjk))
        await acked(peers[0], {FRAMES})
        for peer in peers:
            await peer.close()
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())
    # What waits on the store, decoded: the queue's bound, one request past it, the
    # batch the store holds, and each peer's reader's request waiting for room and its
    # next frame as read (32 MiB grown here), and room for the allocator's ways (the
    # queue's bound again). Weighed by their bytes, 9 requests held the queue where 2
    # do now: 57 MiB grown.
    decoded = 4 * len(CONTENT)
    held = INBOX_BYTES + 2 * decoded + PEERS * (decoded + len(CONTENT))
    assert grown < held + INBOX_BYTES, f"{grown / MIB:.0f} MiB, {held / MIB:.0f} MiB held"


def test_a_request_weighs_its_strings_decoded_where_they_hold_more_than_its_bytes() -> None:
    ascii_frame = message(1, "x" * 900_000)
    _, cost, weight = JSON.decode_weighed(ascii_frame)
    values = cost - len(ascii_frame)  # its metadata's, FREE_VALUE_BYTES each
    assert weight == cost  # plain ASCII: its bytes, as before
    emoji = message(1, CONTENT)  # escaped: plain ASCII, decoded 4 bytes a character
    _, cost, weight = JSON.decode_weighed(emoji)
    assert cost == len(emoji) + values  # the byte rate charges it as before
    assert weight >= 4 * len(CONTENT) + values
    cjk = message(1, "\N{CJK UNIFIED IDEOGRAPH-4E2D}" * 1000)  # 2 bytes a character
    _, cost, weight = JSON.decode_weighed(cjk)
    assert cost == len(cjk) + values and weight >= 2000 + values
    packed = msgspec.msgpack.encode(json.loads(emoji))
    _, cost, weight = MSGPACK.decode_weighed(packed)
    assert cost == len(packed) + values and weight >= 4 * len(CONTENT) + values
