"""The fixtures of the storage contract suite (test_storage_contract*.py): ``backend``,
each backend of tests/storage_backends.py in turn (with its server, if it runs on one),
and ``store``, a store of it opened in a temp dir and closed after the test. A test
module takes them in by importing them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import Storage
from tests.storage_backends import BACKENDS, Backend


@pytest.fixture(name="backend", params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend_fixture(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    return chosen.bound(request)


@pytest.fixture(name="store")
async def store_fixture(backend: Backend, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = await backend.open(tmp_path)
    try:
        yield storage
    finally:
        await storage.close()
