"""A small request that is not plain ASCII JSON (every MessagePack frame; JSON with CJK,
emoji or ``\\u`` escapes) is weighed in a session's queue by a bound from its bytes, not
by a walk of its strings: ``WIDEST_PER_BYTE`` (9) times its bytes, never less than what
its strings hold decoded (protocol/free_form.py ``held_at_most``, which proves it).

Here the bound against the walk on the worst frames (one character of each width in
many tiny strings, escapes, dictionary keys, a frame at the size where the walk takes
over), and, at the server's defaults, MessagePack and JSON clients publishing CJK and
emoji on a stuck store: their session's queue fills to its count (4,096 requests), not
to its bytes, and every request is acknowledged and stored once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.free_form import (
    SMALL_FRAME_BYTES,
    WIDEST_PER_BYTE,
    held_at_most,
    held_by_strings,
)
from bamboo_session.server.config import ServerConfig
from tests.redis_server import RedisServer, prefix_for
from tests.store_stalls_support import frozen
from tests.support import Peer, attach, run_server
from tests.test_server_lifecycle import eventually

# One character of each width a str can take, and the narrowest of each in UTF-8.
ONE_OF_EACH_WIDTH = ("\xe9", "\u0100", "\u4e2d", "\U0001f600", "a")
WAIT = 60.0  # seconds for a condition on a loaded machine
# A connection has at most 512 requests in flight (half --send-queue-frames): 12 agents
# of one session publish more than its queue's 4,096 and the store's batch hold.
AGENTS = 12
EACH = 480


def custom(data: Any) -> dict[str, Any]:
    return {"type": "event", "id": 1, "event": {"type": "custom", "name": "c", "data": data}}


def worst_frames() -> list[dict[str, Any]]:
    """Frames whose strings hold the most decoded for their bytes."""
    frames = []
    for char in ONE_OF_EACH_WIDTH:
        for count in (1, 2, 5, 20, 45, 60, 300):
            frames.append(custom([char] * count))  # many tiny strings
            frames.append(custom({f"{char}{n}": char for n in range(count)}))  # keys too
            frames.append(custom(["a" * 30 + char] * count))
        for length in (1, 3, 20, 60, 100, 200, 1000):
            content = char + "a" * (length - 1)
            token = {"type": "token", "content": content}
            frames.append({"type": "event", "id": 1, "event": token})
            message = {"role": "user", "content": content, "metadata": {char: [char]}}
            frames.append({"type": "message", "id": 1, "message": message})
    return frames


@pytest.mark.parametrize("wire", ["msgpack", "json", "json-escaped"])
def test_the_bound_is_never_under_what_the_strings_hold_decoded(wire: str) -> None:
    most = 0.0
    for frame in worst_frames():
        if wire == "msgpack":
            codec, data = MSGPACK, msgspec.msgpack.encode(frame)
        else:
            codec, data = JSON, json.dumps(frame, ensure_ascii=wire == "json-escaped")
        decoded, cost, weight = codec.decode_weighed(data)
        exact = max(len(data), held_by_strings(decoded))
        assert held_at_most(data, decoded) >= exact, data
        assert weight == cost - len(data) + held_at_most(data, decoded)
        if isinstance(data, str) and data.isascii() and "\\u" not in data:
            assert held_at_most(data, decoded) == len(data)  # plain ASCII: its bytes
        elif len(data) <= SMALL_FRAME_BYTES:
            assert held_at_most(data, decoded) == WIDEST_PER_BYTE * len(data)  # no walk
            most = max(most, exact / len(data))
        else:
            assert held_at_most(data, decoded) == exact  # walked: as before
    if wire == "msgpack":  # 'Ā' alone is 3 bytes of MessagePack and holds 27 decoded:
        assert most > 6.5  # 6.8, the frame's own fields taking 40 of its 224 bytes


def test_a_session_queue_of_small_frames_is_bound_by_its_count_first_at_the_defaults() -> None:
    defaults = ServerConfig()
    most = defaults.inbox_limit * WIDEST_PER_BYTE * SMALL_FRAME_BYTES
    assert most < defaults.inbox_bytes  # 8,257,536 < 8,388,608


def token_frame(n: int) -> dict[str, Any]:
    content = f"{n} \u4e2d\u6587\u5b57 \U0001f600" if n % 2 else f"{n} caf\xe9 \u0100"
    return {"type": "event", "id": n, "event": {"type": "token", "content": content}}


async def publish(agent: Peer, first: int, count: int, msgpack: bool) -> None:
    for n in range(first, first + count):
        frame = token_frame(n)
        if msgpack:
            await agent.send(frame)
        else:  # CJK as UTF-8, as most clients send it
            await agent.ws.send(json.dumps(frame, ensure_ascii=False))


async def acked(agent: Peer, ids: set[int]) -> None:
    async with asyncio.timeout(WAIT):
        while ids:
            reply = await agent.recv_type("ack", WAIT)
            ids.remove(reply["id"])


@pytest.mark.parametrize("msgpack", [True, False])
async def test_cjk_and_emoji_clients_fill_a_stuck_queue_to_its_count_and_are_served(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, msgpack: bool
) -> None:
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    async with run_server(store=store, store_read_timeout=30.0) as server:  # default bounds
        limit, max_bytes = server.config.inbox_limit, server.config.inbox_bytes
        async with contextlib.AsyncExitStack() as stack:
            first, welcome = await stack.enter_async_context(
                attach(server, role="agent", msgpack=msgpack)
            )
            session_id = welcome["session"]["id"]
            agents = [first]
            for _ in range(AGENTS - 1):
                joined = attach(server, session_id, role="agent", msgpack=msgpack)
                agents.append((await stack.enter_async_context(joined))[0])
            actor = server.manager.live_actor(session_id)
            assert actor is not None
            with frozen(redis):  # its appends wait (up to redis-py's 10 s)
                await asyncio.gather(
                    *(publish(a, i * EACH, EACH, msgpack) for i, a in enumerate(agents))
                )
                # The readers wait for room with the queue at its count, not its bytes.
                await eventually(lambda: actor.inbox._waiters, WAIT)
                assert len(actor.inbox) == limit
                assert actor.inbox.bytes < max_bytes
            ids = [set(range(i * EACH, (i + 1) * EACH)) for i in range(AGENTS)]
            await asyncio.gather(*(acked(a, i) for a, i in zip(agents, ids, strict=True)))
        stored = await server.manager.read_events(session_id)
        contents = sorted(e.event.content for e in stored)
        assert contents == sorted(token_frame(n)["event"]["content"] for n in range(AGENTS * EACH))
