"""The server's integration tests on every storage backend: a test module that uses
the ``server_store`` fixture (``pytestmark = pytest.mark.usefixtures("server_store")``,
and ``pytest_generate_tests`` imported from here) runs each of its tests once per
backend of tests/storage_backends.py, and every ``run_server`` in it serves that store
unless the test names another. A test marked ``durable`` (it restarts the server and
expects what was stored) runs on the durable backends only.

The store's URL is derived from the test's own temporary directory, so it is the same
for every server a test starts (a restart finds its data) and no two tests share one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support
from tests.storage_backends import BACKENDS

# Variants of a backend (jsonl-os) add nothing the server could tell apart.
SERVER_BACKENDS = {backend.name: backend for backend in BACKENDS if "-" not in backend.name}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_store" not in metafunc.fixturenames:
        return
    durable_only = metafunc.definition.get_closest_marker("durable") is not None
    names = [name for name, b in SERVER_BACKENDS.items() if b.durable or not durable_only]
    metafunc.parametrize("server_store", names, indirect=True)


@pytest.fixture
def server_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """This test's store URL, which every ``run_server`` of the test serves."""
    backend = SERVER_BACKENDS[request.param].bound(request)
    url = backend.url(tmp_path / "store")
    support.default_store = url
    try:
        yield url
    finally:
        support.default_store = None
