"""The Redis backend: several Bamboo instances share one store, and a client may
attach, publish and resume on any of them (``redis://host:port/db?prefix=bamboo``).

Modules: ``storage`` (RedisStorage, the contract), ``layout`` (keys and encodings),
``scripts`` and the ``*.lua`` files (every write, atomic in Redis), ``listener`` (pub/sub
to the Feed), ``queries`` (list_sessions), ``maintenance`` (cleanup under the lease),
``lease`` (the fenced lease), ``presence`` (connections across instances),
``user_connections`` (each user's connections on every instance), ``config``
(URL options), ``versions`` (the redis-py and the Redis it needs). The layout and
the durability settings: docs/storage-redis.md.
"""

from __future__ import annotations

import redis

from ..url import StoreOptions, StoreURL
from .config import RedisConfig
from .storage import RedisStorage
from .versions import REDIS_PY_FLOOR, require_redis_py

__all__ = ["REDIS_PY_FLOOR", "RedisConfig", "RedisStorage", "open_from_url", "require_redis_py"]


async def open_from_url(url: StoreURL, options: StoreOptions) -> RedisStorage:
    """``redis://host:port/db?prefix=...``: the store under that prefix."""
    require_redis_py(getattr(redis, "__version__", ""))  # one that says none is taken
    return await RedisStorage.open(RedisConfig.from_url(url, options))
