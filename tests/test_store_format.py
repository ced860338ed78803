"""Every store says which format it holds, and a version refuses a store of a newer
format than it reads, changing nothing in it (docs/upgrading.md): the JSONL store's
``FORMAT`` file, the SQLite file's schema version, the Redis store's ``{idx}:format``
key. A rollback onto data a later version wrote is then told in one line and exits 2
(a bad configuration, which neither a supervisor nor ``serve --workers`` restarts),
instead of being read as something it is not. Stores of a version before the record
(none of the JSONL store or on Redis) are format 1, and get the record at their first
writable open; a read-only open (``ls``, ``show``, migrate's source) writes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from bamboo_session.persistence import StoreMisconfigured, open_storage
from bamboo_session.persistence.base import StoreTooNew
from bamboo_session.persistence.sqlite.schema import SCHEMA_VERSION
from bamboo_session.protocol import AgentEvent, Session
from tests.redis_server import INSTALL_HINT, RedisServer, available
from tests.test_failures import refused_start

NEWER = SCHEMA_VERSION + 1  # what a later version would write


def tree_digest(base: Path) -> dict[str, str]:
    """Every file under ``base`` (LOCK aside: a lock's holder pid) by its content."""
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def ls(store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "ls", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def jsonl_store_with_a_session(base: Path) -> None:
    storage = await open_storage(str(base))
    try:
        await storage.create_session(Session.new("s1", user_id="u1", title="Chat"))
        await storage.append_event("s1", AgentEvent.token("hello"), key="k1")
    finally:
        await storage.close()


# -- JSONL ------------------------------------------------------------------------------


async def test_a_new_jsonl_store_records_its_format(tmp_path: Path) -> None:
    storage = await open_storage(str(tmp_path / "data"))
    await storage.close()
    assert json.loads((tmp_path / "data" / "FORMAT").read_text()) == {"format": 2}


async def test_a_jsonl_store_of_an_older_version_is_format_1_and_gets_its_record(
    tmp_path: Path,
) -> None:
    """A store made before the record (no ``FORMAT``) opens as it did: read-only, with
    nothing written; writable, moved to format 2 (its ids have no capital: no file
    renamed) with the record written once."""
    base = tmp_path / "data"
    await jsonl_store_with_a_session(base)
    (base / "FORMAT").unlink()  # as every version before the record left a store
    reader = await open_storage(str(base), read_only=True)
    assert (await reader.get_metadata("s1")) is not None
    await reader.close()
    assert not (base / "FORMAT").exists()
    storage = await open_storage(str(base))
    assert (await storage.last_seq("s1")) == 1
    await storage.close()
    assert json.loads((base / "FORMAT").read_text()) == {"format": 2}


async def test_a_jsonl_store_of_a_newer_format_is_refused_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    base = tmp_path / "data"
    await jsonl_store_with_a_session(base)
    (base / "FORMAT").write_text('{"format": 3}\n')
    before = tree_digest(base)
    for read_only in (False, True, False):  # the lock is let go: the same refusal again
        with pytest.raises(StoreTooNew, match=r"store format 3, newer than .* reads \(2\)"):
            await open_storage(str(base), read_only=read_only)
    event = await refused_start(base, 2)
    assert "FORMAT" in event and "store format 3" in event and "a newer version" in event
    listed = ls(f"jsonl://{base}")
    assert listed.returncode != 0 and "store format 3" in listed.stderr, listed.stderr
    assert tree_digest(base) == before


@pytest.mark.parametrize("content", [b"", b"format 1\n", b'{"format": 0}', b'{"format": "1"}'])
async def test_a_jsonl_format_record_that_is_none_is_refused_naming_it(
    tmp_path: Path, content: bytes
) -> None:
    base = tmp_path / "data"
    await jsonl_store_with_a_session(base)
    (base / "FORMAT").write_bytes(content)
    with pytest.raises(StoreMisconfigured, match="FORMAT is not a store format record"):
        await open_storage(str(base))
    assert (base / "FORMAT").read_bytes() == content


# -- SQLite -----------------------------------------------------------------------------


async def test_an_sqlite_file_of_a_newer_schema_exits_2_and_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    """The refusal was there, but ``serve`` exited 1, a status a supervisor restarts
    for ever, and told a rollback to "upgrade bamboo-session", which it just undid."""
    path = tmp_path / "sessions.db"
    storage = await open_storage(f"sqlite://{path}")
    await storage.close()
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {NEWER}")
    connection.close()
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(
            StoreTooNew, match=rf"schema version {NEWER}, newer than .* reads \({SCHEMA_VERSION}\)"
        ):
            await open_storage(f"sqlite://{path}", read_only=read_only)
    event = await refused_start(tmp_path / "data", 2, "--store", f"sqlite://{path}")
    assert f"schema version {NEWER}" in event and "a newer version" in event, event
    assert path.read_bytes() == before


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest) -> Callable[[], str]:
    if not available():
        pytest.skip(INSTALL_HINT)
    prefix = f"format-{request.node.name[-40:]}".replace("[", "-").replace("]", "")
    return lambda: redis_server.url(prefix=prefix)


def format_key(redis_server: RedisServer, url: str) -> tuple[redis.Redis, str]:
    prefix = url.split("prefix=")[1].split("&")[0]
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    return client, f"{prefix}:{{idx}}:format"


async def test_a_new_redis_store_records_its_format_and_a_reader_writes_none(
    redis_server: RedisServer, redis_url: Callable[[], str]
) -> None:
    url = redis_url()
    client, key = format_key(redis_server, url)
    reader = await open_storage(url, read_only=True)
    await reader.close()
    assert client.get(key) is None
    storage = await open_storage(url)
    await storage.close()
    assert client.get(key) == b"1"


async def test_a_redis_store_of_a_newer_format_is_refused(
    redis_server: RedisServer, redis_url: Callable[[], str], tmp_path: Path
) -> None:
    url = redis_url()
    storage = await open_storage(url)
    await storage.close()
    client, key = format_key(redis_server, url)
    client.set(key, "2")
    for read_only in (False, True):
        with pytest.raises(StoreTooNew, match=r"store format 2, newer than .* reads \(1\)"):
            await open_storage(url, read_only=read_only)
    event = await refused_start(tmp_path / "data", 2, "--store", url)
    assert "store format 2" in event and "a newer version" in event, event
    assert client.get(key) == b"2"


async def test_a_redis_format_record_that_is_none_is_refused(
    redis_server: RedisServer, redis_url: Callable[[], str]
) -> None:
    url = redis_url()
    client, key = format_key(redis_server, url)
    client.set(key, "one")
    with pytest.raises(StoreMisconfigured, match="is not a store format record"):
        await asyncio.wait_for(open_storage(url), 30)
