"""The fixtures of the JSONL storage tests (test_jsonl_storage*.py): ``config``, a
JsonlStorageConfig in a temp dir, and ``storage``, a JsonlStorage opened on it and
closed after the test. A test module takes them in by importing them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig


@pytest.fixture(name="config")
def config_fixture(tmp_path: Path) -> JsonlStorageConfig:
    return JsonlStorageConfig(tmp_path / "data")


@pytest.fixture(name="storage")
async def storage_fixture(config: JsonlStorageConfig) -> AsyncIterator[JsonlStorage]:
    storage = await JsonlStorage.open(config)
    yield storage
    await storage.close()
