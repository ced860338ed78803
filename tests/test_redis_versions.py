"""The redis-py and the Redis the Redis store needs (persistence/redis/versions.py):
the package's floor is the first redis-py whose asyncio PubSub subscribes to sharded
channels, which the store uses; an older one, installed against the floor, is refused
by name when the store opens instead of failing every attach. So is a Redis older
than 7.0, or one that knows no HELLO, instead of failing calls one by one."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from bamboo_session.persistence import SessionFilter, StoreMisconfigured
from bamboo_session.persistence.redis import REDIS_PY_FLOOR, require_redis_py
from bamboo_session.persistence.redis.versions import REDIS_FLOOR, require_redis
from tests.redis_server import RedisServer, prefix_for
from tests.support import opened
from tests.test_failures import refused_start

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_extra_asks_for_the_redis_py_the_store_needs() -> None:
    """redis-py 5.2 to 7.4 have ssubscribe on their synchronous PubSub only: on them,
    against Redis 7, every hello closed 1011 (``'PubSub' object has no attribute
    'ssubscribe'``). The floor is what keeps pip from installing one."""
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["redis"]
    (requirement,) = [r for r in extra if re.match(r"redis\b", r)]
    floor = re.fullmatch(r"redis>=(\d+)\.(\d+)(?:\.\d+)?", requirement)
    assert floor is not None, requirement
    assert (int(floor[1]), int(floor[2])) == REDIS_PY_FLOOR == (8, 0), requirement


@pytest.mark.parametrize("version", ["5.2.1", "7.4.1", "7.99.0"])
def test_an_older_redis_py_is_refused_by_name(version: str) -> None:
    with pytest.raises(ValueError, match=f"needs redis-py 8.0 or later, not {version}"):
        require_redis_py(version)


@pytest.mark.parametrize("version", ["8.0.0", "8.1.0", "9.0.0b1", "unknown"])
def test_the_floor_and_later_are_taken(version: str) -> None:
    require_redis_py(version)


def test_the_installed_redis_py_has_what_the_store_calls() -> None:
    """Fails where this venv's redis-py is older than the floor (a scratch run with
    PYTHONPATH naming one): the check, and the method it stands for."""
    require_redis_py(redis.__version__)
    assert hasattr(redis.asyncio.client.PubSub, "ssubscribe")


@pytest.mark.parametrize("version", [(6, 2), (6, 0), (5, 0)])
def test_a_redis_before_7_0_is_refused_by_name(version: tuple[int, int]) -> None:
    """Redis 6 runs the store's scripts, but fails on how they refuse (common.lua
    ``fail`` raises a table, which Redis 6's Lua error handler cannot take): a hello of
    a missing session closed 1011, an append to a closed one answered ``internal``.
    Checked by hand on Redis 6.0.20 and 6.2.16 (51 of the Redis suites' tests fail on
    6.0.20); none runs here, so what is checked is the refusal of the version read."""
    dotted = ".".join(map(str, version))
    with pytest.raises(StoreMisconfigured, match=f"needs Redis 7.0 or later, not {dotted}"):
        require_redis(version)


@pytest.mark.parametrize("version", [(7, 0), (7, 4), (8, 0)])
def test_redis_7_0_and_later_are_taken(version: tuple[int, int]) -> None:
    assert REDIS_FLOOR == (7, 0)
    require_redis(version)


async def test_a_redis_that_knows_no_hello_is_refused_in_one_line(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """redis-py 8 opens every connection with ``HELLO 3``, which Redis before 6.0 does
    not know: played here by a Redis with HELLO renamed away (Redis 5.0.14 answers it
    alike, checked by hand). ``serve`` said "redis unavailable" and exited 1, a status
    a supervisor restarts for ever; now it names what the store needs, and exits 2."""
    server = start_redis("no-hello")
    server.stop()
    server.options = ("--rename-command", "HELLO", "HELLO_RENAMED")
    server.start()
    event = await refused_start(tmp_path / "data", 2, "--store", server.url(prefix="p"))
    assert "Redis refused HELLO" in event, event
    assert "needs Redis 7.0 or later, with HELLO allowed" in event, event


async def test_a_resp2_only_peer_that_answers_noproto_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """A proxy in front of Redis that speaks RESP2 only answers ``HELLO 3`` with
    ``NOPROTO`` (as Redis answers a protocol it lacks): played by a listener on
    loopback that answers every command so. ``serve`` said "redis unavailable" and
    exited 1 (only "unknown command" was read as a refused HELLO); now it says what
    the store needs, and exits 2."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            writer.write(b"-NOPROTO unsupported protocol version\r\n")
            await writer.drain()
        writer.close()

    peer = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = peer.sockets[0].getsockname()[1]
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix=p"
        event = await refused_start(tmp_path / "data", 2, "--store", url)
    finally:
        peer.close()
        await peer.wait_closed()
    assert "Redis refused HELLO (NOPROTO" in event, event
    assert "needs Redis 7.0 or later, with HELLO allowed" in event, event


@pytest.mark.parametrize("version", ["8.0.0b1", "8.1.0.dev0", "8.0rc1", ""])
def test_a_pre_release_or_no_version_is_taken(version: str) -> None:
    require_redis_py(version)


async def test_a_redis_py_that_names_no_version_opens_the_store(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build of redis-py without ``__version__`` (a vendored copy, a patched one):
    the store opened with an AttributeError's traceback and `serve` said "server
    failed"; the check takes it, as it takes a version it cannot read."""
    monkeypatch.delattr(redis, "__version__")
    async with opened(redis_server.url(prefix=prefix_for(tmp_path))) as store:
        assert (await store.list_sessions(SessionFilter())).total == 0
