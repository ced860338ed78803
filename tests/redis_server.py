"""A real redis-server for tests: started on a free loopback port in a temporary
directory (``appendonly yes``, ``appendfsync always``), stopped by its pid.

The ``redis_server`` fixture (tests/conftest.py) starts one per test session; a test
that restarts or kills Redis starts its own with :func:`start_redis_server`. Where the
binary is missing, the tests that need it are skipped, and the run ends with one line
saying how to install it (:data:`INSTALL_HINT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis import RedisStorage
from tests.parent_death import ending_with_this_process
from tests.proxies import RedisProxy

INSTALL_HINT = "install redis-server: apt-get install -y redis-server"
# BAMBOO_REDIS_SERVER names another binary (or a missing one, to see the skips).
REDIS_SERVER = (
    os.environ.get("BAMBOO_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
)


def available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; :meth:`stop` and :meth:`start` again keep its port
    and its directory (and so its append-only file). ``persistence`` is what it starts
    with: durable by default; a test that needs a Redis that may lose acknowledged
    writes changes it and starts it again, as one does that sets ``options`` (more of
    redis-server's command line, such as ``--rename-command HELLO X``)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.persistence = {"appendonly": "yes", "appendfsync": "always", "save": ""}
        self.options: tuple[str, ...] = ()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def url(self, prefix: str | None = None, **params: object) -> str:
        query = {"prefix": prefix, **params} if prefix else params
        tail = "&".join(f"{name}={value}" for name, value in query.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{tail}" if tail else "")

    def start(self, timeout: float = 10.0) -> None:
        self._launch()
        self._answering(timeout)

    async def start_in_loop(self, timeout: float = 10.0) -> None:
        """:meth:`start` from a test's event loop without blocking it: launched from the
        loop's thread, so that it ends with the test process (tests/parent_death.py: a
        worker thread of ``asyncio.to_thread`` would take it along when it ended), and
        waited for in a worker thread."""
        self._launch()
        await asyncio.to_thread(self._answering, timeout)

    def _launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                *(part for pair in self.persistence.items() for part in ("--" + pair[0], pair[1])),
                "--repl-diskless-sync-delay", "0",
                "--logfile", str(self.directory / "redis.log"),
                "--daemonize", "no",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=ending_with_this_process(),  # no redis-server left by a killed test
        )  # fmt: skip

    def _answering(self, timeout: float) -> None:
        """Returns once the launched server answers; RuntimeError if it exits or does not
        answer within ``timeout`` seconds (then it is stopped)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by pid: SIGTERM (a clean shutdown) or SIGKILL (a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Again and again: Redis refuses a SIGTERM while it writes its first AOF.
            process.send_signal(sig)
            try:
                process.wait(0.2)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait(10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def start_redis_server(directory: Path) -> RedisServer:
    """A new redis-server in ``directory``, up and answering."""
    for _ in range(3):  # a free port may be taken before the server binds it
        server = RedisServer(directory)
        try:
            server.start()
            return server
        except RuntimeError:
            if not available():
                raise
    server = RedisServer(directory)
    server.start()
    return server


def prefix_for(directory: Path) -> str:
    """A key prefix of its own for each test directory (so reopening the same
    directory finds the same keys, and no two tests share any)."""
    return "t" + hashlib.sha1(str(directory).encode()).hexdigest()[:16]


async def link_replica(replica: Any, primary: RedisServer) -> None:
    """Makes the redis-server ``replica`` (an asyncio client of it) a replica of
    ``primary`` and returns once their link is up (or after 10 s)."""
    await replica.execute_command("REPLICAOF", "127.0.0.1", primary.port)
    for _ in range(200):
        info = await replica.execute_command("INFO", "replication")
        if info.get("master_link_status") == "up":
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def redis_store(server: RedisServer, directory: Path) -> AsyncIterator[RedisStorage]:
    """A store on ``server`` with keys of its own (``prefix_for(directory)``) and no
    cleanup sweep, closed at the end."""
    storage = await open_storage(server.url(prefix=prefix_for(directory)), cleanup_interval=None)
    assert isinstance(storage, RedisStorage)
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def store_through_proxy(
    redis_server: RedisServer, prefix: str
) -> AsyncIterator[tuple[RedisProxy, str]]:
    """A tests/proxies.py RedisProxy before ``redis_server``, and a store URL (keys under
    ``prefix``, a 1 s heartbeat) through it; replies it holds are let go at the end."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        yield proxy, f"redis://127.0.0.1:{port}/0?prefix={prefix}&heartbeat=1"
    finally:
        proxy.release_replies()
        await proxy.close()


async def able_to_refuse_writes(server: RedisServer) -> None:
    """Starts ``server`` again allowing ``CONFIG SET dir`` (Redis 7 protects it), which
    :func:`refusing_writes` needs."""
    server.stop()
    server.options = (*server.options, "--enable-protected-configs", "local")
    await server.start_in_loop()


@contextlib.asynccontextmanager
async def refusing_writes(server: RedisServer) -> AsyncIterator[str]:
    """Redis refusing writes as it does once its disk is full: ``MISCONF`` for every
    write (and PING) after a snapshot failed, ``stop-writes-on-bgsave-error yes`` (its
    default). The snapshot is made to fail by moving Redis's ``dir`` to /proc, where no
    file can be made, whoever runs it; on exit the dir is put back and a snapshot that
    succeeds ends the refusals. Yields Redis's words for the refusal. The server must
    allow ``CONFIG SET dir`` (:func:`able_to_refuse_writes`)."""
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    try:
        await client.config_set("save", "3600 1")  # snapshots on: their failure counts
        await client.config_set("dir", "/proc")
        await _snapshot(client, "err")
        try:
            await client.set("probe", "1")
        except redis.exceptions.ResponseError as refused:
            words = str(refused)
        else:
            raise AssertionError("Redis took a write after a failed snapshot")
        assert words.startswith("MISCONF "), words
        try:
            yield words
        finally:
            await client.config_set("dir", str(server.directory))
            await _snapshot(client, "ok")
    finally:
        await client.aclose()


async def _snapshot(client: redis.asyncio.Redis, outcome: str) -> None:
    """A BGSAVE (scheduled after a rewrite under way), then its end, which must be
    ``outcome`` (INFO's ``rdb_last_bgsave_status``)."""
    await client.execute_command("BGSAVE", "SCHEDULE")
    for _ in range(400):
        info = await client.info("persistence")
        if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == outcome:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no snapshot ended {outcome}: {info}")
