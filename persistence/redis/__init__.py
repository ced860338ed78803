"""The Redis backend: several Bamboo instances share one store, and a client may
attach, publish and resume on any of them (``redis://host:port/db?prefix=bamboo``).

Modules: ``storage`` (RedisStorage, the contract), ``layout`` (keys and encodings),
``scripts`` and the ``*.lua`` files (every write, atomic in Redis), ``listener`` (pub/sub
to the Feed), ``queries`` (list_sessions), ``maintenance`` (cleanup under the lease),
``lease`` (the fenced lease), ``presence`` (connections across instances),
``user_connections`` (each user's connections on every instance), ``config``
(URL options). The layout and the durability settings: docs/storage-redis.md.
"""

from __future__ import annotations

import re

import redis

from ..url import StoreOptions, StoreURL
from .config import RedisConfig
from .storage import RedisStorage

__all__ = ["RedisConfig", "RedisStorage", "open_from_url"]

# redis-py's first asyncio PubSub with ssubscribe (the store's sharded pub/sub on
# Redis 7); also its first that speaks RESP3 by default (HELLO 3: Redis 6.0 and later).
REDIS_PY_FLOOR = (8, 0)


async def open_from_url(url: StoreURL, options: StoreOptions) -> RedisStorage:
    """``redis://host:port/db?prefix=...``: the store under that prefix."""
    require_redis_py(redis.__version__)
    return await RedisStorage.open(RedisConfig.from_url(url, options))


def require_redis_py(version: str) -> None:
    """ValueError (the server then refuses to start) on a redis-py older than the
    package's floor, which pip lets in only when told to: on it, every attach on
    Redis 7 would fail on a pub/sub method it lacks."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < REDIS_PY_FLOOR:
        raise ValueError(
            f"the redis store needs redis-py {'.'.join(map(str, REDIS_PY_FLOOR))} or later, "
            f"not {version} (pip install 'bamboo-session[redis]')"
        )
