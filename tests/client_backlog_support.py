"""What the tests of the Python client's bounded queue (tests/test_client_backlog.py)
and of sessions closed while a client is behind (tests/test_client_closed_sessions.py)
share: a server's URL, token events published many at a time, reading a client's next
events or all of them to its end, within a bound."""

from __future__ import annotations

import asyncio

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, ConnectionLost, StoredEvent
from bamboo_session.server.app import BambooServer

CONTENT = "t" * 160  # a token of a streaming model, give or take


def url(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def publish_many(
    publisher: BambooClient, count: int, in_flight: int = 500, content: str = CONTENT
) -> None:
    """``count`` token events, ``in_flight`` at a time (they go as batch frames)."""
    for start in range(0, count, in_flight):
        batch = range(start, min(count, start + in_flight))
        await asyncio.gather(*(publisher.publish(Token(content)) for _ in batch))


async def take(client: BambooClient, count: int, timeout: float) -> list[StoredEvent]:
    """The next ``count`` events of ``client``, within ``timeout`` seconds."""
    got: list[StoredEvent] = []

    async def reading() -> None:
        async for item in client.events():
            assert isinstance(item, StoredEvent), item  # a Reset would be a lost resume
            got.append(item)
            if len(got) == count:
                return

    await asyncio.wait_for(reading(), timeout)
    return got


async def read_to_the_end(
    client: BambooClient, timeout: float
) -> tuple[list[int], Exception | None]:
    """The seqs ``events()`` yields until it ends, and what it raised, if anything."""
    seqs: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            async for item in client.events():
                assert isinstance(item, StoredEvent), item
                seqs.append(item.seq)
    except ConnectionLost as exc:
        return seqs, exc
    return seqs, None
