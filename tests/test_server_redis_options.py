"""The Redis options of ``serve`` (``--redis-wait-replicas``, ``--redis-wait-timeout-ms``):
they go into a Redis store's URL, are refused for another store, and take effect: with
a replica asked for and none there, a publish fails with ``internal`` and says why.
A password in the store's URL never reaches a log line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.models import Token
from bamboo_session.server.cli import build_parser, config_from_args
from bamboo_session.server.config import ServerConfig
from tests.redis_server import RedisServer, prefix_for
from tests.support import open_peer, run_server


def test_flags_go_into_the_redis_url() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--store",
            "redis://127.0.0.1:6379/0?prefix=p&wait_replicas=3",
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "250",
        ]
    )
    config = config_from_args(args)
    assert config.store_url() == (
        "redis://127.0.0.1:6379/0?prefix=p&wait_replicas=1&wait_timeout_ms=250"
    )
    assert ServerConfig(store="redis://h:1/0").store_url() == "redis://h:1/0"


@pytest.mark.parametrize("store", [None, "memory://", "jsonl:///tmp/x"])
def test_redis_flags_are_refused_for_other_stores(store: str | None) -> None:
    config = ServerConfig(store=store, redis_wait_replicas=1)
    with pytest.raises(ValueError, match="redis://"):
        config.store_url()


def test_a_password_is_masked_in_logs() -> None:
    config = ServerConfig(store="redis://user:s3cret@127.0.0.1:6379/0?prefix=p")
    assert config.store_for_logs() == "redis://user:***@127.0.0.1:6379/0?prefix=p"
    assert "s3cret" in config.store_url()


@pytest.mark.parametrize(
    "store",
    [
        "redis://:hunter2@127.0.0.1:9/0?nope=1",  # an unknown option
        "redis://:x@127.0.0.1:9/0?password=hunter2",  # a secret the way redis-py takes it
        "redis://bamboo:hunter2@127.0.0.1:9/0?pubsub=loud",  # a bad value
        "rediss://:hunter2@127.0.0.1:9/0",  # an unknown scheme
    ],
)
def test_a_refused_store_url_is_named_without_its_password(store: str, tmp_path: Path) -> None:
    # serve's "cannot start: store URL '...'" line quoted the URL whole, password too.
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
    for extra in ([], ["--durability", "os"]):  # (--durability reads the URL first)
        done = subprocess.run(
            [*argv, "--store", store, "--data-dir", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = done.stdout + done.stderr
        assert done.returncode == 2, said
        assert "store URL" in said and ":***@127.0.0.1:9/0" in said
        assert "hunter2" not in said


async def test_waiting_for_a_replica_that_is_not_there_fails_writes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    async with run_server(store=url, redis_wait_replicas=1, redis_wait_timeout_ms=50) as server:
        async with open_peer(server, "s") as peer:
            await peer.send({"type": "hello", "create": True})
            code, _frames = await peer.closed()
            assert code == 1011  # creating the session is a write
        await server.manager.storage.touch("s")  # the session is there: only WAIT failed
        with pytest.raises(StorageError, match="only 0 of 1 replicas"):
            await server.manager.append_event("s", Token("x"))
