"""The versions the Redis store needs, and the checks that refuse others when it opens
(so ``serve`` exits 2 naming what it found, rather than failing calls one by one):
redis-py's (``REDIS_PY_FLOOR``, which the package's ``redis`` extra asks for too) and
Redis's (``REDIS_FLOOR``, read by ``server_version`` from ``INFO``, else ``HELLO``)."""

from __future__ import annotations

import re
from typing import Final

import redis.exceptions
from redis.asyncio import Redis

from ..base import StoreMisconfigured
from .credentials import credentials_refused
from .pool import read
from .scripts import unreachable

# redis-py's first asyncio PubSub with ssubscribe (the store's sharded pub/sub); also
# its first that speaks RESP3 by default (HELLO 3 on every connection).
REDIS_PY_FLOOR: Final = (8, 0)
# Redis 7.0: a script's typed error (common.lua ``fail``) is a table raised by
# ``error()``, which Redis 6's Lua error handler fails on, so that every one came out
# as "Error running script" (a hello of a missing session closed 1011, not 4404); and
# EVAL_RO, sharded pub/sub, a script's WRONGTYPE passed on, each used as it is.
REDIS_FLOOR: Final = (7, 0)


def require_redis_py(version: str) -> None:
    """ValueError (the server then refuses to start) on a redis-py older than the
    package's floor, which pip lets in only when told to: on it, every attach on
    Redis 7 would fail on a pub/sub method it lacks. A version that does not start
    with two numbers is taken."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < REDIS_PY_FLOOR:
        raise ValueError(
            f"the redis store needs redis-py {_dotted(REDIS_PY_FLOOR)} or later, "
            f"not {version} (pip install 'bamboo-session[redis]')"
        )


def require_redis(version: tuple[int, int]) -> None:
    """StoreMisconfigured on a Redis older than ``REDIS_FLOOR``."""
    if version < REDIS_FLOOR:
        raise StoreMisconfigured(
            f"the redis store needs Redis {_dotted(REDIS_FLOOR)} or later, not "
            f"{_dotted(version)}: on it, each call whose script refuses (a missing or "
            "closed session) would fail as a storage error"
        )


async def server_version(client: Redis, where: str = "Redis") -> tuple[int, int]:
    """Redis's version, from ``INFO server``, else from ``HELLO`` where an ACL refuses
    INFO (every Redis with ACLs, 6.0 and later, answers HELLO with a protocol version;
    without one only from 6.2). A Redis that knows no ``HELLO`` (before 6.0, or with
    the command renamed away) refuses every connection redis-py opens with it:
    StoreMisconfigured, which says so. So does one that refuses the URL's credentials
    (a wrong password or user, none where one is required: the first call makes the
    first connection), naming ``where`` (the store's URL, its password masked): every
    open would be refused alike, which "redis unavailable" hid."""
    try:
        try:
            version = _text((await read(client, "INFO", "server"))["redis_version"])
        except redis.exceptions.ResponseError as exc:
            if _knows_no_hello(exc):
                raise
            protocol = client.connection_pool.connection_kwargs.get("protocol") or 3
            version = _hello_version(await read(client, "HELLO", protocol))
    except redis.exceptions.AuthenticationError as exc:
        raise credentials_refused(where, exc) from None
    except redis.exceptions.ResponseError as exc:
        if _knows_no_hello(exc):
            raise StoreMisconfigured(
                f"Redis refused HELLO ({exc}): the redis store needs Redis "
                f"{_dotted(REDIS_FLOOR)} or later, with HELLO allowed (RESP3)"
            ) from None
        raise unreachable(exc) from exc
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _knows_no_hello(exc: redis.exceptions.ResponseError) -> bool:
    """Redis's refusal of ``HELLO 3``: a command it does not know (before 6.0, or
    renamed), or a protocol it does not speak (``NOPROTO``, a RESP2-only proxy)."""
    text = str(exc).lower().removeprefix("err ")
    return (text.startswith("unknown command") and "hello" in text) or text.startswith("noproto")


def _hello_version(hello: object) -> str:
    """The version in HELLO's reply: a map in RESP3, a flat list of pairs in RESP2."""
    if isinstance(hello, dict):
        pairs = list(hello.items())
    elif isinstance(hello, list):
        pairs = list(zip(hello[::2], hello[1::2], strict=False))
    else:
        pairs = []
    for name, value in pairs:
        if _text(name) == "version":
            return _text(value)
    raise redis.exceptions.ResponseError(f"HELLO names no version: {hello!r:.200}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
