"""A session's status (server/status.py) reclaiming its state on a real Redis store: its
process's connections, taken for gone by another process (which parked the session,
``disconnected``), are registered again, and :meth:`SessionStatus.reclaim` writes back
the state held here. Activity the other process records between reclaim's read and its
write (an attach there: ``active``) is not overwritten: the write is conditional on
what reclaim read, as a look's idle is. The window is opened on purpose: this process
reaches Redis through a proxy that holds the reply to reclaim's read until the other
process's attach has landed. Before, a held ``idle`` landed over that ``active``, and
the store said ``idle`` a moment after the attach, with the other process holding the
session active (writing nothing more until its look)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.protocol.models import SessionState
from bamboo_session.server.status import SessionStatus
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.storage_contract_support import new_session

IDLE_TIMEOUT = 10.0
ACTIVE, IDLE, DISCONNECTED = SessionState.ACTIVE, SessionState.IDLE, SessionState.DISCONNECTED


@pytest.fixture
async def proxied(redis_server: RedisServer) -> AsyncIterator[tuple[RedisProxy, int]]:
    """A proxy to the test session's Redis, and its port."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        yield proxy, port
    finally:
        proxy.release_replies()
        await proxy.close()


async def stored(store: Storage) -> SessionState:
    meta = await store.get_metadata("s1")
    assert meta is not None
    return meta.state


@pytest.mark.parametrize("held", [IDLE, ACTIVE])
async def test_an_attach_elsewhere_between_reclaims_read_and_write_is_kept(
    redis_server: RedisServer,
    proxied: tuple[RedisProxy, int],
    tmp_path: Path,
    held: SessionState,
) -> None:
    """Held ``idle`` here: the other process's ``active`` stays, and this status takes
    it at its next look. Held ``active``: the store says ``active`` either way."""
    prefix = prefix_for(tmp_path)
    proxy, port = proxied
    here = await open_storage(f"redis://127.0.0.1:{port}/0?prefix={prefix}")
    there = await open_storage(redis_server.url(prefix=prefix))
    try:
        session = await new_session(there, "s1", ttl=3600)
        status = SessionStatus("s1", held, here, ttl=3600, epoch=session.metadata.epoch)
        await there.update_session_state("s1", IDLE)
        await there.update_session_state("s1", DISCONNECTED)  # it took ours for gone
        meta_key = there.layout.meta("s1").encode()  # type: ignore[attr-defined]
        proxy.hold_reply_to(b"HGETALL\r\n$%d\r\n%s" % (len(meta_key), meta_key))
        reclaiming = asyncio.create_task(status.reclaim())
        await eventually(lambda: proxy.replies_held == 1)  # reclaim read disconnected
        await there.touch("s1")  # the other process's attach: activity, then active
        await there.update_session_state("s1", ACTIVE)
        proxy.release_replies()
        await asyncio.wait_for(reclaiming, 10)
        assert await stored(there) == ACTIVE  # before, held idle: idle
        assert status.state == held  # attached here all the same, not disconnected
        await status.check(quiet_for=1.0, idle_timeout=IDLE_TIMEOUT, traffic=False)
        assert (await stored(there), status.state) == (ACTIVE, ACTIVE)
    finally:
        await here.close()
        await there.close()
