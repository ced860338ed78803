"""The Python client, when its session is replaced while it is away: the session is
closed, deleted and created again under its id (another log, another epoch, its seqs
from 1 again) and closed, so the client's resume is refused with 4409. The client asks
``GET /api/v1/sessions/{id}/events`` whether events follow the last it delivered; the
answer names the epoch of the log it was read from, another than the client's, so the
client does not take the new log's events as the rest of its own: events() yields a
Reset to the new log and ends, the client with SessionEnded. Real servers on ephemeral
loopback ports, the client reaching its server through a proxy that cuts it off."""

from __future__ import annotations

import asyncio
from typing import Any

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import (
    BambooClient,
    ClientError,
    Reset,
    SessionEnded,
    StoredEvent,
)
from tests.instances import eventually
from tests.proxies import HttpProxy
from tests.support import get, run_server

SESSION = "swapped"


async def read_to_the_end(
    client: BambooClient, timeout: float
) -> tuple[list[Any], Exception | None]:
    """What ``events()`` yields until it ends, and what it raised (None: it ended)."""
    items: list[Any] = []

    async def read() -> None:
        async for item in client.events():
            items.append(item)

    try:
        await asyncio.wait_for(read(), timeout)
    except ClientError as exc:
        return items, exc
    return items, None


async def replaced_while_away(new_events: int) -> tuple[list[Any], Exception | None, Any, str, str]:
    """A viewer (through a proxy) gets events 1..5 of the session; the proxy cuts it
    off; the session is closed, deleted and created again with ``new_events`` events,
    then closed; the proxy lets the viewer back. What its events() yields after 1..5,
    what ended events() (None: it ended) and the client, the old epoch and the new one."""
    async with run_server() as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        base = f"ws://127.0.0.1:{server.port}"
        try:
            agent = await BambooClient.connect(base, SESSION, create=True, role="agent")
            viewer = await BambooClient.connect(
                f"ws://127.0.0.1:{port}", SESSION, backoff_initial=0.05, backoff_max=0.2
            )
            try:
                async with agent:
                    for _ in range(5):
                        await agent.publish(Token("old"))
                    seen: list[int] = []
                    async with asyncio.timeout(5):
                        async for item in viewer.events():
                            assert isinstance(item, StoredEvent), item
                            seen.append(item.seq)
                            if len(seen) == 5:
                                break
                    assert seen == [1, 2, 3, 4, 5]
                    old_epoch = viewer.epoch
                    assert old_epoch is not None
                    page = await viewer.read_events(after_seq=3)
                    assert [e.seq for e in page.events] == [4, 5]
                    assert (page.last_seq, page.epoch) == (5, old_epoch)
                    proxy.cut()
                    await eventually(lambda: not viewer.connected)
                    await agent.set_state("closed")
                await server.manager.delete_session(SESSION)
                async with await BambooClient.connect(
                    base, SESSION, create=True, role="agent"
                ) as replacing:
                    for _ in range(new_events):
                        await replacing.publish(Token("new"))
                    await replacing.set_state("closed")
                    new_epoch = replacing.epoch
                assert new_epoch is not None and new_epoch != old_epoch
                status, page = await get(server, f"/api/v1/sessions/{SESSION}/events?limit=100")
                assert status == 200, page
                assert page["epoch"] == new_epoch
                assert [e["seq"] for e in page["events"]] == list(range(1, new_events + 1))
                proxy.mend()
                items, error = await read_to_the_end(viewer, 15)
                try:
                    await viewer.ping()
                except ClientError as exc:
                    ended: Any = exc
                else:
                    ended = None
            finally:
                await viewer.close()
        finally:
            await proxy.close()
    return items, error, ended, old_epoch, new_epoch


async def test_a_session_replaced_with_more_events_while_away_is_not_spliced() -> None:
    """The new log holds events after seq 5 (8 of them). Before, the client ended with
    ConnectionLost naming seq 5 and telling to read GET …/events?after_seq=5, which
    answers the new log's events 6..8 as if they followed the old log's 5."""
    items, error, ended, old_epoch, new_epoch = await replaced_while_away(8)
    assert items == [Reset(new_epoch, 8, old_epoch, 5)], items
    assert error is None, repr(error)
    assert isinstance(ended, SessionEnded), repr(ended)


async def test_a_session_replaced_with_fewer_events_while_away_says_so() -> None:
    """The new log is shorter than the old (2 events): no event after seq 5 in it.
    Before, the client ended events() normally, as if the session it followed had
    simply closed at seq 5, saying nothing of the events after 5 that may have gone
    with the old log."""
    items, error, ended, old_epoch, new_epoch = await replaced_while_away(2)
    assert items == [Reset(new_epoch, 2, old_epoch, 5)], items
    assert error is None, repr(error)
    assert isinstance(ended, SessionEnded), repr(ended)
