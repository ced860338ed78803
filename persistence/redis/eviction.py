"""Whether Redis may evict the store's keys (``maxmemory-policy``): read at the open
(``INFO memory``, which a Redis that refuses ``CONFIG`` may still answer) and again at
each look of the durability watch (``CONFIG GET``, durability.py).

Under an ``allkeys-*`` policy, Redis at its ``maxmemory`` drops any key: sessions'
metadata, logs and index entries, so acknowledged events are lost with no change of
epoch, and the bytes of a session dropped whole stay in its user's sum (``userbytes``),
which nothing then frees (docs/storage-redis.md, Durability). The store sets an expiry
only on presence, lease and user-connection keys, never on a session's: ``noeviction``
and the ``volatile-*`` policies keep every session.
"""

from __future__ import annotations

import logging

import redis.exceptions
from redis.asyncio import Redis

from .pool import read
from .scripts import unreachable

log = logging.getLogger(__name__)

POLICY = "maxmemory-policy"


def eviction_danger(policy: str | None) -> str | None:
    """What ``policy`` may do to the store's keys, said for an operator (what is lost,
    what to set); None if it keeps every session's keys (or is not known)."""
    if policy is None or not policy.startswith("allkeys"):
        return None
    return (
        f"Redis may evict any key at its maxmemory ({POLICY} {policy}): it would drop "
        "sessions and the events it acknowledged, and leave their bytes counted against "
        f"their users' --max-user-bytes for good; set {POLICY} noeviction"
    )


async def warn_of_eviction(client: Redis) -> str | None:
    """At the open: logs a warning when Redis may evict any key; returns that danger
    (None where it keeps the sessions' keys, or INFO does not say, or is refused)."""
    try:
        info = await read(client, "INFO", "memory")
    except redis.exceptions.ResponseError:
        return None  # INFO's memory section refused: nothing to tell
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    danger = eviction_danger(_text(info.get("maxmemory_policy")))
    if danger is not None:
        log.warning("%s", danger)
    return danger


async def read_policy(client: Redis) -> str | None:
    """Redis's ``maxmemory-policy`` as it runs now: one ``CONFIG GET``; None where it is
    refused (renamed, disabled, or denied by an ACL) or not said."""
    try:
        said = await read(client, "CONFIG GET", POLICY)
    except redis.exceptions.ResponseError:
        return None
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    for key, value in said.items():
        if _text(key) == POLICY:
            return _text(value)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None
