"""What a WebSocket client sees of a session whose delete the JSONL store undid (no
WAL, ``fsync`` mode: the delete's directory sync failed, and the rename back is not
known durable either, ``persistence/jsonl/lifecycle.py``): the session is readable, and
every append is refused with ``internal`` saying that only a restart lets it in; the
refusal holds for an actor created after the failed delete, and after the restart the
same append, with the same key, is taken."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import lifecycle
from bamboo_session.protocol.models import AgentEvent
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.support import attach, token
from tests.test_jsonl_sync_failures import failing_directory_sync, tokens


@contextlib.asynccontextmanager
async def embedded(config: JsonlStorageConfig) -> AsyncIterator[BambooServer]:
    """A server on a store opened by its embedder (the WAL off is not a URL option)."""
    async with await JsonlStorage.open(config) as storage:
        server = BambooServer(
            ServerConfig(host="127.0.0.1", port=0, data_dir=str(config.base_path), rate_limit=0),
            storage,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def test_appends_after_an_undone_delete_wait_for_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, lifecycle, config.layout.sessions)
    retry = {"type": "event", "id": 2, "key": "k2", "event": token("b")}
    async with embedded(config) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "key": "k1", "event": token("a")}, "ack")
        failing["left"] = 1
        assert server._manager is not None
        with pytest.raises(StorageError, match="not deleted"):
            await server._manager.delete_session(session_id)  # its actor stopped first
        async with attach(server, session_id, role="agent") as (agent, welcome):
            assert welcome["session"]["last_seq"] == 1  # readable, by a new actor
            error = await agent.request(retry, "error")
            assert error["code"] == "internal" and error["id"] == 2
            assert error["message"].startswith(
                "the store takes no appends to this session until the server restarts"
            ), error
            assert (await agent.request({"type": "ping", "id": 3}, "pong"))["id"] == 3
    async with embedded(config) as server:  # the restart: its open settles the session
        async with attach(server, session_id, role="agent") as (agent, _welcome):
            assert (await agent.request(retry, "ack"))["seq"] == 2
        assert isinstance(server.storage, JsonlStorage)
        assert await tokens(server.storage, session_id) == [
            AgentEvent.token("a"),
            AgentEvent.token("b"),
        ]
