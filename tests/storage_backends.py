"""The storage backends the contract suite runs on, each opened by URL on real files in
a temporary directory (or, for servers, a real server the fixture starts).

A backend joins the contract suite by adding a :class:`Backend` to ``BACKENDS``; it is
done when ``tests/test_storage_contract*.py`` and ``tests/test_storage_model.py`` pass
on it unchanged. A backend that runs on a server names the session-scoped fixture that
starts it (``server``); a test module's ``backend`` fixture (the contract suite's:
tests/storage_contract_fixtures.py) hands out ``backend.bound(request)``, whose ``url``
has that server filled in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import Storage, open_storage
from tests.redis_server import RedisServer, prefix_for


def _unbound(directory: Path) -> str:
    raise RuntimeError("a server backend's URL needs its server: use backend.bound(request)")


def _redis_url(server: RedisServer, directory: Path) -> str:
    return server.url(prefix=prefix_for(directory))


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    url: Callable[[Path], str]  # the store's URL, given a fresh temporary directory
    durable: bool = True  # whether a reopened store still holds what was acknowledged
    server: str | None = None  # the session-scoped fixture of the server it runs on
    url_on: Callable[[Any, Path], str] | None = None  # (server, directory) -> its URL

    def bound(self, request: pytest.FixtureRequest) -> Backend:
        """This backend with its server started (or the test skipped, without one)."""
        if self.server is None or self.url_on is None:
            return self
        server = request.getfixturevalue(self.server)
        url_on = self.url_on
        return dataclasses.replace(self, url=lambda directory: url_on(server, directory))

    async def open(self, directory: Path, **options: Any) -> Storage:
        return await open_storage(self.url(directory), **options)


BACKENDS: list[Backend] = [
    Backend("memory", lambda _directory: "memory://", durable=False),
    Backend("jsonl", lambda directory: f"jsonl://{directory / 'store'}"),
    Backend("jsonl-os", lambda directory: f"jsonl://{directory / 'store'}?durability=os"),
    Backend("sqlite", lambda directory: f"sqlite://{directory / 'store.db'}"),
    Backend("sqlite-os", lambda directory: f"sqlite://{directory / 'store.db'}?durability=os"),
    Backend("redis", _unbound, server="redis_server", url_on=_redis_url),
]
