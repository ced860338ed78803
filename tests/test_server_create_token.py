"""A ``hello`` with ``create`` that finds the session made by another after all (its
creation refused by the store with SessionExists, and welcomed to that session)
created nothing, and spends no creation-rate token: the creator's next new session
is not refused 4429. (The same for one welcomed to an expired session that its append
renewed: tests/test_server_expiry_race.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorageConfig
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.app import BambooServer
from tests.held_delete_support import embedded, held_directory_sync
from tests.instances import eventually
from tests.support import attach

# Tokens for three creations, none refilled within the test.
TOKENS = {"session_create_rate": 0.001, "session_create_burst": 3}


async def welcome_of(server: BambooServer, session_id: str) -> dict[str, Any]:
    async with attach(server, session_id, create=True, user_id="u") as (_, welcome):
        return welcome


async def test_a_create_that_finds_the_session_made_meanwhile_spends_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store").with_wal(enabled=False)
    async with embedded(config, store_read_timeout=30, **TOKENS) as server:
        storage = server.manager.storage
        await welcome_of(server, "a")  # one token
        await storage.update_session_state("a", SessionState.EXPIRED)
        # The replacement of "a" (a token) held at the old files' delete, with the
        # owner's creation lock: the creation of "b" (a token, for now) waits for it.
        started, release = held_directory_sync(monkeypatch, config.layout.sessions, False)
        replacing = asyncio.create_task(welcome_of(server, "a"))
        try:
            assert await asyncio.to_thread(started.wait, 30)
            creating = asyncio.create_task(welcome_of(server, "b"))
            await eventually(lambda: "b" in server.manager.creations, timeout=30)
            # Made by another meanwhile (as by another instance of a shared store).
            await storage.create_session(Session.new("b", user_id="u", title="theirs"))
        finally:
            release.set()
        await replacing
        assert (await creating)["session"]["title"] == "theirs"
        # So the creator has a token left for a new session.
        assert (await welcome_of(server, "c"))["session"]["id"] == "c"
