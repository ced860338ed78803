"""Test-suite settings and shared fixtures.

Under CI, hypothesis runs derandomized, so a submission's CI run is reproducible and a
rare example found by chance cannot block a landing; local runs keep exploring new
examples. ``redis_server`` is one real redis-server for the whole run (tests/
redis_server.py); without the binary its tests are skipped, and the run ends with one
line saying how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.redis_server import INSTALL_HINT, RedisServer, available, start_redis_server

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[str], RedisServer]]:
    """Start redis-servers of this test's own (to kill, restart, or replicate), each in
    ``tmp_path / name``; all stopped by pid at the end."""
    if not available():
        pytest.skip(INSTALL_HINT)
    started: list[RedisServer] = []

    def start(name: str) -> RedisServer:
        server = start_redis_server(tmp_path / name)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not available():
        pytest.skip(INSTALL_HINT)
    server = start_redis_server(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if any(INSTALL_HINT in str(getattr(report, "longrepr", "")) for report in skipped):
        terminalreporter.write_line(f"Redis tests skipped: {INSTALL_HINT}")
