"""The Lua scripts of the Redis backend (the ``*.lua`` files beside this module), and
how they are called: by SHA, loaded again when the server lost its script cache (a
restart), made once more where their connection dropped if they only read
(``READING_SCRIPTS``, pool.py), with their typed errors turned into the storage
contract's exceptions and an unreachable server into :class:`StorageError` (into
:class:`OutcomeUnknown` for a write that may have been sent: ``maybe_written``); and
the epochs their replies carry.

Each script runs atomically in Redis and checks everything before its first write, so
a script that fails wrote nothing; but for a key written over with another type from
outside (WRONGTYPE), which append.lua meets among the session's own keys before any
write, and the shared indexes only as it writes them (docs/storage-redis.md).
``common.lua`` is prepended to every script.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final

import redis.exceptions
from redis.asyncio import Redis

from ..base import (
    InvalidTransition,
    OutcomeUnknown,
    OwnerAtCap,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFull,
    SessionNotFound,
    SessionRefused,
    StorageError,
    StorageFull,
    UserFull,
)
from .pool import NoConnection, attempt, described

NAMES: Final = (
    "append",
    "create",
    "delete",
    "generation",
    "history",
    "import",
    "import_meta",
    "list",
    "orphans",
    "presence",
    "read",
    "recount",
    "recount_user",
    "state",
    "touch",
    "user_conns",
)

# The scripts that write nothing: only these are made again where their connection
# dropped (any other may have run though its reply was lost), and on Redis 7.0 and
# later they are called by EVALSHA_RO, which Redis refuses to a script that writes
# (``eval_commands``; tests/test_redis_pool.py checks them on older ones' behalf).
READING_SCRIPTS: Final = frozenset({"history", "list", "read"})

Arg = str | bytes | int
# Called before a script is loaded again: Redis lost its script cache, as a restart
# does, and a restart of a Redis that may lose writes changes the store's generation
# (generation.py), which must be settled before any script runs on the new Redis.
BeforeReload = Callable[[], Awaitable[object]] | None


class Fenced(SessionRefused):
    """The lease named in a fenced call is no longer held by the caller's token."""


class HistoryLost(SessionRefused):
    """A call named its session's log as an earlier generation of the store served it:
    Redis, which may lose writes it acknowledged, restarted since (generation.py), and
    every session's epoch changed. The caller's peers resume under the new epoch."""


class KeyOfWrongType(StorageError):
    """A script met a key that holds another type than it writes (Redis's WRONGTYPE,
    passed on from the script by Redis 7). Redis does not say which key: one of the
    session's own, or an index every session's writes share (``{idx}:msgs``), whose
    failure is the store's; the caller that can tell them apart does (appending.py)."""


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: bytes) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source).hexdigest()


def _load() -> dict[str, Script]:
    folder = importlib.resources.files(__package__)
    common = (folder / "common.lua").read_bytes()
    return {name: Script(name, common + (folder / f"{name}.lua").read_bytes()) for name in NAMES}


SCRIPTS: Final = _load()


def eval_commands(name: str, eval_ro: bool) -> tuple[str, str]:
    """The commands script ``name`` is called by, by its SHA and by its source: for
    one of ``READING_SCRIPTS``, where Redis has them (``eval_ro``: 7.0 and later), the
    read-only ones, which Redis refuses to a script that writes, so that a script the
    store may send twice can write nothing, whatever its code comes to say."""
    if eval_ro and name in READING_SCRIPTS:
        return "EVALSHA_RO", "EVAL_RO"
    return "EVALSHA", "EVAL"


async def run(
    client: Redis,
    name: str,
    keys: Sequence[Arg],
    args: Sequence[Arg],
    before_reload: BeforeReload = None,
    eval_ro: bool = False,
) -> Any:
    """Run script ``name``; its errors as the contract's exceptions."""
    script = SCRIPTS[name]
    by_sha, by_source = eval_commands(name, eval_ro)

    async def once() -> Any:
        try:
            return await client.execute_command(by_sha, script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            if before_reload is not None:
                await before_reload()
            return await client.execute_command(by_source, script.source, len(keys), *keys, *args)

    reads = name in READING_SCRIPTS
    try:
        return await attempt(client, once, only_reads=reads)
    except redis.exceptions.ResponseError as exc:
        raise translate(exc) from None
    except redis.exceptions.RedisError as exc:
        raise (unreachable(exc) if reads else maybe_written(exc)) from exc


async def run_many(
    client: Redis,
    name: str,
    calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]],
    before_reload: BeforeReload = None,
    eval_ro: bool = False,
) -> list[Any]:
    """Run script ``name`` once per ``(keys, args)``, in one round trip (not atomic as
    a whole); the replies in order. A failed call raises, as :func:`run` would."""
    script = SCRIPTS[name]
    by_sha = eval_commands(name, eval_ro)[0]

    async def send(indexes: Sequence[int]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for i in indexes:
            keys, args = calls[i]
            pipe.execute_command(by_sha, script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def once() -> list[Any]:
        replies = await send(range(len(calls)))
        lost = [i for i, reply in enumerate(replies) if _no_script(reply)]
        if lost:
            # The script cache was lost (a restart): these calls did not run. Loaded
            # once, they run again in one more round trip, not one round trip each.
            if before_reload is not None:
                await before_reload()
            await client.execute_command("SCRIPT", "LOAD", script.source)
            for i, reply in zip(lost, await send(lost), strict=True):
                replies[i] = reply
        return replies

    reads = name in READING_SCRIPTS
    try:
        replies = await attempt(client, once, only_reads=reads)
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise translate(reply)
            elif isinstance(reply, Exception):
                raise reply
        return replies
    except redis.exceptions.ResponseError as exc:
        raise translate(exc) from None
    except redis.exceptions.RedisError as exc:
        raise (unreachable(exc) if reads else maybe_written(exc)) from exc


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


class ReplicasBehind(OutcomeUnknown):
    """Fewer replicas than asked confirmed a script's writes in time: they are on the
    primary all the same, and ``reply`` is what the script returned (made, but not as
    durable as asked: not to be acknowledged)."""

    def __init__(self, message: str, reply: Any) -> None:
        super().__init__(message)
        self.reply = reply


async def run_and_wait(
    client: Redis,
    name: str,
    keys: Sequence[Arg],
    args: Sequence[Arg],
    replicas: int,
    timeout_ms: int,
    before_reload: BeforeReload = None,
) -> Any:
    """Run script ``name``, then ``WAIT`` on the same connection until ``replicas``
    replicas have its writes; :class:`ReplicasBehind` if fewer confirm within
    ``timeout_ms`` (the write is on the primary then, and may yet be lost with it)."""
    script = SCRIPTS[name]
    try:
        for command, body in (("EVALSHA", script.sha), ("EVAL", script.source)):
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(command, body, len(keys), *keys, *args)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            sent = partial(pipe.execute, raise_on_error=False)
            reply, confirmed = await attempt(client, sent, only_reads=False)
            if isinstance(reply, redis.exceptions.NoScriptError):
                if before_reload is not None:
                    await before_reload()
                continue
            if isinstance(reply, redis.exceptions.ResponseError):
                raise translate(reply)
            if isinstance(reply, Exception):
                raise reply
            if isinstance(confirmed, Exception):  # (an ACL changed since the store opened)
                raise ReplicasBehind(
                    f"Redis refused WAIT ({confirmed}) after the write; it is on the "
                    "primary, and may be lost with it",
                    reply,
                )
            if confirmed < replicas:
                raise ReplicasBehind(
                    f"only {confirmed} of {replicas} replicas confirmed the write within "
                    f"{timeout_ms} ms; it is on the primary, and may be lost with it",
                    reply,
                )
            return reply
    except redis.exceptions.RedisError as exc:
        raise maybe_written(exc) from exc
    raise StorageError(f"redis: script {name} could not be loaded")


# Redis 7 ends the error of a call a script made with where in the script it was made
# (`` script: <sha1>, on @user_script:<line>.``): our insides, not words for a peer's
# error frame or an operator's /readyz.
_WHERE_IN_SCRIPT: Final = re.compile(r"\s*script: [0-9a-f]+, on @user_script:\d+\.?\s*$")


def translate(exc: redis.exceptions.ResponseError) -> Exception:
    """A script's typed error as the contract's exception; a key of the wrong type
    (Redis 7 keeps the code of an error a script's call raised) as KeyOfWrongType;
    anything else as a StorageError naming what Redis said."""
    text = _WHERE_IN_SCRIPT.sub("", str(exc))
    if text.startswith("WRONGTYPE "):
        return KeyOfWrongType(f"redis: {text}")
    if not text.startswith("BAMBOO_"):
        return StorageError(f"redis: {text}")
    code, _, rest = text.removeprefix("BAMBOO_").partition(" ")
    match code:
        case "NOTFOUND":
            return SessionNotFound("session not found")
        case "EXISTS":
            return SessionExists("session already exists")
        case "FULL":
            return StorageFull("the storage holds its maximum number of sessions")
        case "OWNERLIVE" | "OWNERSTORED":
            return OwnerAtCap(code == "OWNERSTORED", int(rest.split()[0]))
        case "CLOSED":
            return SessionClosed("session is closed")
        case "EXPIRED":
            return SessionExpired("session has expired")
        case "INVALID":
            return InvalidTransition(f"session cannot leave state {rest.split()[0]}")
        case "FENCED":
            return Fenced("the lease is no longer held by this holder")
        case "GENERATION":
            return HistoryLost(
                "redis restarted and may have lost writes it acknowledged: the session's "
                "epoch changed; resume, then retry"
            )
        case "TOOLARGE":
            stored, adding, cap = (int(number) for number in rest.split()[:3])
            return SessionFull(stored, adding, cap)
        case "USERFULL":
            numbers, hex_user = rest.split()[:3], rest.split()[3:4]  # no hex: the user ""
            user = bytes.fromhex("".join(hex_user)).decode(errors="replace")
            mine, adding, cap = (int(number) for number in numbers)
            return UserFull(user, mine, adding, cap)
        case "ORDER":
            seq, expected = rest.split()[:2]
            return ValueError(f"import: seq {seq}, not {expected}")
    return StorageError(f"redis: {text}")


def unreachable(exc: redis.exceptions.RedisError) -> StorageError:
    return StorageError(f"redis unavailable: {described(exc)}")


def maybe_written(exc: redis.exceptions.RedisError) -> StorageError:
    """A write's failure (no Redis answer, not a script's refusal): OutcomeUnknown once
    its command may have been sent (a timeout, a connection lost mid-call: Redis may
    run it, even after the connection closed, from what it had read), a plain
    StorageError where no connection was to be had (nothing was sent)."""
    if isinstance(exc, NoConnection):
        return unreachable(exc)
    return OutcomeUnknown(f"redis unavailable: {described(exc)}")


def optional_arg(value: int | None) -> int | str:
    """A number a script takes that may be absent: "" for none."""
    return "" if value is None else value


def removed_epoch(reply: Any) -> str | None:
    """The epoch of the session a create replaced, a delete removed or an import
    closed, as their scripts return it (1 for a session stored with none)."""
    return reply.decode() if isinstance(reply, bytes) else None


def epoch_in_hash(flat: list[bytes]) -> str | None:
    """The epoch in a metadata hash as HGETALL returns it."""
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        if name == b"epoch":
            return value.decode()
    return None
