"""Settings of the Redis backend, read from its store URL:
``redis://[user:password@]host:port/db?prefix=bamboo&wait_replicas=1&...``, where
``/db``, if any, is the database's number (a path that is not one is refused: redis-py
read ``/zz`` as database 0 and ``/1/2`` as 12, without a word).

- ``prefix`` (default ``bamboo``): the start of every key, so several stores share
  one Redis (tests use one per test). Letters, digits and ``_.:-``.
- ``wait_replicas`` (default 0): acknowledge an append, a close or a delete only once
  that many replicas have it (``WAIT``), within ``wait_timeout_ms`` (default 1000).
- ``pubsub``: ``sharded`` (SSUBSCRIBE/SPUBLISH, the default; on a Cluster a
  session's messages then stay on its shard) or ``classic``.
- ``lease_ttl`` (seconds, default 30): how long the cleanup lease lasts unless renewed.
- ``heartbeat`` (seconds, default 30): how long a connection counts in presence after
  its instance last refreshed it.
- ``max_connections`` (default 50): connections to Redis from one instance at most;
  more calls at once wait for a free one.
- ``accept_lossy`` (``true`` or ``false``, the default): open a writable store on a
  Redis whose ``CONFIG`` says it may lose writes it acknowledged (``appendonly`` not
  ``yes``, ``appendfsync`` not ``always``, or ``no-appendfsync-on-rewrite yes``),
  with a warning; refused otherwise. A restart of such a Redis then changes every
  session's epoch (generation.py): the store cannot tell what it lost, and would
  otherwise give the lost events' seqs to other events under the same epoch, which
  the wire contract forbids (docs/storage-redis.md, Durability).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..url import StoreOptions, StoreURL

_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_DATABASE_PATH = re.compile(r"(/[0-9]{1,5})?/?")  # the path of redis://host:port/db
PubSubMode = Literal["sharded", "classic"]


@dataclasses.dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str  # what redis-py connects to
    prefix: str = "bamboo"
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    pubsub: PubSubMode | None = None  # None: sharded
    lease_ttl: float = 30.0
    heartbeat: float = 30.0
    max_connections: int = 50
    accept_lossy: bool = False
    default_ttl: int | None = None
    max_sessions: int | None = None
    cleanup_interval: float | None = None
    read_only: bool = False
    max_session_bytes: int | None = None  # a session's events' JSON and keys at most
    max_user_bytes: int | None = None  # the sessions' of one user, summed, at most

    @classmethod
    def from_url(cls, url: StoreURL, options: StoreOptions) -> RedisConfig:
        url.check_params(
            {
                "prefix",
                "wait_replicas",
                "wait_timeout_ms",
                "pubsub",
                "lease_ttl",
                "heartbeat",
                "max_connections",
                "accept_lossy",
            }
        )
        path = url.location.partition("/")[1:]
        if not _DATABASE_PATH.fullmatch("".join(path)):
            raise ValueError(
                f"store URL {url.text!r}: its path names the database by number "
                "(redis://host:6379/0), not by anything else"
            )
        prefix = url.take("prefix", "bamboo") or ""
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"store URL {url.text!r}: prefix must be 1 to 64 of A-Z a-z 0-9 _ . : -"
            )
        pubsub = url.take("pubsub")
        if pubsub not in (None, "sharded", "classic"):
            raise ValueError(f"store URL {url.text!r}: pubsub must be sharded or classic")
        accept_lossy = url.take("accept_lossy", "false")
        if accept_lossy not in ("true", "false"):
            raise ValueError(f"store URL {url.text!r}: accept_lossy must be true or false")
        return cls(
            url=f"redis://{url.location}",
            prefix=prefix,
            wait_replicas=int(_number(url, "wait_replicas", 0, whole=True)),
            wait_timeout_ms=int(_number(url, "wait_timeout_ms", 1000, whole=True)),
            pubsub=pubsub,  # type: ignore[arg-type]
            lease_ttl=_number(url, "lease_ttl", 30.0),
            heartbeat=_number(url, "heartbeat", 30.0),
            max_connections=max(1, int(_number(url, "max_connections", 50, whole=True))),
            accept_lossy=accept_lossy == "true",
            default_ttl=options.default_ttl,
            max_sessions=options.max_sessions,
            cleanup_interval=options.cleanup_interval,
            read_only=options.read_only,
            max_session_bytes=options.max_session_bytes,
            max_user_bytes=options.max_user_bytes,
        )


def _number(url: StoreURL, name: str, default: float, whole: bool = False) -> float:
    text = url.take(name)
    if text is None:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = -1
    if not value >= 0:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"store URL {url.text!r}: {name} must be {kind} >= 0, not {text!r}")
    return value
