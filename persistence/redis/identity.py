"""Which store a :class:`RedisStorage` is, however its URL spells it: the Redis server
it reached (the ``run_id`` of that server's run, from ``INFO server``), the database
and the key prefix, defaults applied. ``localhost`` and ``127.0.0.1``, no database and
``/0``, no prefix and ``?prefix=bamboo`` are then one store, and ``bamboo-session
migrate`` refuses it as both source and destination (server/migrate_cli.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, NamedTuple

import redis.exceptions

from .pool import read
from .scripts import unreachable

if TYPE_CHECKING:
    from .storage import RedisStorage


class StoreIdentity(NamedTuple):
    run: str | None  # the server's run_id; None where Redis refuses INFO (an ACL)
    address: str  # "<ip>:<port>" the client connects to
    db: int
    prefix: str

    def same_as(self, other: StoreIdentity) -> bool:
        """One store: the same database and prefix on one server, known by its run
        where both could read it, else by the address (two users of one server, one
        allowed INFO and the other not, are still one server)."""
        if (self.db, self.prefix) != (other.db, other.prefix):
            return False
        if self.run is not None and other.run is not None:
            return self.run == other.run
        return self.address == other.address


async def store_identity(storage: RedisStorage) -> StoreIdentity:
    """The identity of the store ``storage`` opened; StorageError if Redis fails."""
    client = storage.redis.client
    given: dict[str, Any] = client.connection_pool.connection_kwargs
    return StoreIdentity(
        await _run_id(storage),
        await _address(given),
        int(given.get("db") or 0),
        storage.config.prefix,
    )


async def _run_id(storage: RedisStorage) -> str | None:
    try:
        info = await read(storage.redis.client, "INFO", "server")
    except redis.exceptions.ResponseError:
        return None  # INFO refused (an ACL)
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    run_id = info.get("run_id") if isinstance(info, dict) else None
    if isinstance(run_id, bytes):
        run_id = run_id.decode()
    return run_id if isinstance(run_id, str) and run_id else None


async def _address(given: dict[str, Any]) -> str:
    """The address the client connects to, its host name resolved as it is for the
    connection: the next best thing to the server's own identity."""
    host, port = str(given.get("host") or "localhost"), int(given.get("port") or 6379)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return f"{host.lower()}:{port}"
    return f"{found[0][4][0]}:{port}"
