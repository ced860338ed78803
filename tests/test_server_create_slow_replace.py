"""A ``hello`` with ``create`` that replaces an expired session on a JSONL store, the
replacement held at the delete of the old session's files (its directory sync) for
longer than the new session's TTL: the new session's TTL runs from the instant the
store made it, not from before the replacement's disk work, so the hello is welcomed
to it (not closed 4404 ``session expired`` at once), and it is not expired after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorageConfig
from bamboo_session.protocol.models import SessionState
from tests.held_delete_support import embedded, held_directory_sync
from tests.support import attach, open_peer, token

TTL = 1  # seconds: the new session's, shorter than the replacement is held


async def test_a_create_slower_than_the_ttl_welcomes_the_new_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", default_ttl=TTL).with_wal(enabled=False)
    async with embedded(config, store_read_timeout=30) as server:
        storage = server.manager.storage
        async with attach(server, "s", create=True, role="agent") as (agent, old):
            await agent.request({"type": "event", "id": 1, "event": token("old")}, "ack")
        await storage.update_session_state("s", SessionState.EXPIRED)
        started, release = held_directory_sync(monkeypatch, config.layout.sessions, fails=False)

        async def hello_with_create() -> dict[str, Any]:
            async with open_peer(server, "s") as peer:
                await peer.send({"type": "hello", "create": True, "user_id": "u"})
                first: dict[str, Any] = await peer.recv(30)
                return first

        creating = asyncio.create_task(hello_with_create())
        try:
            assert await asyncio.to_thread(started.wait, 30)  # the old files' delete, held
            await asyncio.sleep(TTL + 0.5)  # longer than the new session's TTL
        finally:
            release.set()
        welcome = await creating
        assert welcome["type"] == "welcome", welcome
        assert welcome["epoch"] != old["epoch"] and welcome["last_seq"] == 0
        metadata = await storage.get_metadata("s")
        assert metadata is not None and not metadata.is_expired(storage.now())
