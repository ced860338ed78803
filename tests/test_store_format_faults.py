"""The store format records (docs/upgrading.md) where the store is not at its best: a
first open after the upgrade on a full disk or a Redis at its ``maxmemory``, a record
that holds something odd, a refused file left as it was.

A store without its record is format 1: the versions before the record started on it
full or not, so a record that cannot be written is said in a warning and the store
opens as before (the next writable open writes it). Without that, the first start of
the new version on a full disk or a full Redis (``noeviction``) failed (exit 1, which a
supervisor restarts for ever), where the old version served reads and resumes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bamboo_session.persistence import StorageError, StoreMisconfigured, open_storage
from bamboo_session.persistence.base import StoreTooNew
from bamboo_session.persistence.sqlite.schema import SCHEMA_VERSION
from tests.disk_full_support import mounted_tmpfs
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess
from tests.test_redis_acl import acl_user
from tests.test_store_format import jsonl_store_with_a_session

NOT_WRITTEN = "could not be written"


def warnings_of(server: ServerProcess) -> list[str]:
    return [r["event"] for r in server.log_records() if r.get("level") == "warning"]


def fill_disk(mount: Path) -> None:
    with (mount / "filler").open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass  # ENOSPC: the disk is full


async def test_a_jsonl_store_without_its_record_starts_on_a_full_disk(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        base = mount / "data"
        await jsonl_store_with_a_session(base)
        (base / "FORMAT").unlink()  # as every version before the record left a store
        await asyncio.to_thread(fill_disk, mount)
        server = ServerProcess(base, tmp_path / "serve.log")
        await server.start_in_loop()
        assert server.stop() == 0
        [warning] = [w for w in warnings_of(server) if NOT_WRITTEN in w]
        assert "FORMAT" in warning and "No space left on device" in warning, warning
        assert sorted(p.name for p in base.iterdir() if p.name.startswith("FORMAT")) == []
        (mount / "filler").unlink()
        storage = await open_storage(str(base))  # room again: the record is written
        assert (await storage.last_seq("s1")) == 1
        await storage.close()
        assert json.loads((base / "FORMAT").read_text()) == {"format": 2}


async def test_a_jsonl_format_record_a_crash_cut_short_is_cleared(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await jsonl_store_with_a_session(base)
    (base / "FORMAT").unlink()
    (base / "FORMAT.0badc0de.tmp").write_bytes(b'{"for')  # killed before its rename
    (base / "FORMAT.notes.tmp").write_bytes(b"an operator's")  # not a name the store makes
    storage = await open_storage(str(base))
    await storage.close()
    names = sorted(p.name for p in base.iterdir() if p.name.startswith("FORMAT"))
    assert names == ["FORMAT", "FORMAT.notes.tmp"]


async def test_a_symlink_in_place_of_the_record_is_named_so(tmp_path: Path) -> None:
    base = tmp_path / "data"
    await jsonl_store_with_a_session(base)
    (base / "FORMAT").unlink()
    (base / "FORMAT").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreMisconfigured, match="FORMAT is a symbolic link"):
        await open_storage(str(base))


async def test_a_redis_store_without_its_record_starts_on_a_full_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    url = redis.url(prefix=prefix_for(tmp_path))
    key = f"{prefix_for(tmp_path)}:{{idx}}:format"
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)
    try:
        storage = await open_storage(url)
        await storage.close()
        await client.delete(key)  # as every version before the record left a store
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")  # every write refused, reads served
        server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--store", url)
        await server.start_in_loop()
        assert server.stop() == 0
        [warning] = [w for w in warnings_of(server) if NOT_WRITTEN in w]
        assert key in warning and "maxmemory" in warning, warning
        assert await client.get(key) is None
        await client.config_set("maxmemory", "0")
        storage = await open_storage(url)  # Redis takes writes again: the record is set
        await storage.close()
        assert await client.get(key) == b"1"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "held",
    [
        ("hset", "format", "1"),  # a key of another type
        ("set", "²"),  # a digit to str.isdigit, not to int()
        ("set", "\u0661"),  # an Arabic-Indic 1: int() takes it, the store never writes it
        ("set", "9" * 5000),  # more digits than int() converts
    ],
    ids=["hash", "superscript", "arabic-indic", "5000-digits"],
)
async def test_a_redis_format_key_that_holds_no_record_is_refused_naming_it(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, held: tuple[str, ...]
) -> None:
    """A bad configuration (``serve`` exits 2), the key named; before, a key of another
    type was "redis unavailable: WRONGTYPE" (exit 1, restarted for ever), and a value
    that only looked like digits a ValueError that named no key."""
    redis = start_redis("redis")
    url = redis.url(prefix=prefix_for(tmp_path))
    key = f"{prefix_for(tmp_path)}:{{idx}}:format"
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)
    try:
        command, *args = held
        await getattr(client, command)(key, *args)
        for read_only in (False, True):
            with pytest.raises(StoreMisconfigured, match="is not a store format record") as e:
                await open_storage(url, read_only=read_only)
            assert key in str(e.value)
        assert await client.type(key) == (b"hash" if command == "hset" else b"string")
    finally:
        await client.aclose()


def sqlite_file(path: Path, application_id: int, version: int) -> bytes:
    """An SQLite file in its default (rollback journal) mode, of ``application_id`` at
    ``version``: its bytes."""
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA application_id = {application_id}")
        connection.execute(f"PRAGMA user_version = {version}")
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("application_id", "refusal"),
    [(0x42616D62, StoreTooNew), (7, StorageError)],
    ids=["newer-schema", "another-program"],
)
async def test_an_sqlite_file_refused_at_a_writable_open_is_left_as_it_was(
    tmp_path: Path, application_id: int, refusal: type[Exception]
) -> None:
    """Refused before anything is written: before, the writable open put the file in
    WAL mode first (its header's bytes 18 and 19), then refused it, changing a file of
    another program, or one a later version wrote in a mode of its own."""
    path = tmp_path / "other.db"
    before = sqlite_file(path, application_id, SCHEMA_VERSION + 1)
    with pytest.raises(refusal):
        await open_storage(f"sqlite://{path}")
    assert path.read_bytes() == before


async def test_an_acl_that_refuses_the_format_record_s_commands(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``SET`` refused: the store opens as format 1, with a warning. ``GET`` refused:
    a bad configuration (``serve`` exits 2) saying which command to allow, not "redis
    unavailable" (exit 1, restarted for ever)."""
    redis = start_redis("redis")
    url = await acl_user(redis, tmp_path, "-set")
    storage = await open_storage(url)
    await storage.close()
    assert [r for r in caplog.records if NOT_WRITTEN in r.getMessage()]
    url = await acl_user(redis, tmp_path, "-get")
    with pytest.raises(StoreMisconfigured, match=r"refuses GET .*format"):
        await open_storage(url, read_only=True)
