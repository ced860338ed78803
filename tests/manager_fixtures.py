"""The fixture of the SessionManager's in-process tests (tests/test_server_manager*.py):
``manager``, a SessionManager of at most 3 live sessions on a JsonlStorage in a temp dir
(durability ``os``), closed after the test. A test module takes it in by importing it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.server.manager import SessionManager, SessionManagerConfig


@pytest.fixture(name="manager")
async def manager_fixture(tmp_path: Path) -> AsyncIterator[SessionManager]:
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    manager = await SessionManager.new(SessionManagerConfig(max_sessions=3), storage)
    yield manager
    await manager.close()
    await storage.close()
