"""The store's connection to Redis, and the one way its commands and scripts are run:
no silent retries (a read is made once more where its connection dropped: pool.py),
Redis errors as the contract's exceptions, and the ``WAIT`` for replicas
(``wait_replicas``) before anything written is acknowledged or published (a write
they fall short on is published all the same, and raises OutcomeUnknown: see
``Commands.write``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bamboo_session.tasks import cancel_and_wait

from ..base import OutcomeUnknown, StorageError, StoreMisconfigured
from .config import RedisConfig
from .pool import READ_COMMANDS, CheckedPool, attempt, read
from .scripts import (
    Arg,
    BeforeReload,
    ReplicasBehind,
    run,
    run_and_wait,
    run_many,
    unreachable,
)

log = logging.getLogger(__name__)

POOL_WAIT = 10.0  # seconds a call waits for a free connection before it fails
# Seconds a send or a read waits on Redis before its call fails (and its connection is
# dropped): a Redis that stops reading or answering fails calls, not hangs them.
SOCKET_TIMEOUT = 10.0
# What check_persistence reads of Redis's CONFIG: whether a write it acknowledged is
# on disk (the first two, and the third, which skips the fsync while a snapshot or a
# rewrite runs even with appendfsync always), and what a restart comes back to if not.
NO_FSYNC_ON_REWRITE = "no-appendfsync-on-rewrite"
PERSISTENCE_SETTINGS = ("appendonly", "appendfsync", NO_FSYNC_ON_REWRITE, "save")
# A script that writes nothing but declares, by its shebang without flags, that it may
# write (Redis 7): Redis refuses it before it runs exactly when it refuses writes
# (MISCONF while it cannot persist, OOM at its maxmemory, READONLY on a replica), and
# runs it otherwise, changing nothing and propagating nothing. (A script without a
# shebang is refused only at its first write: it would pass.)
WRITE_PROBE = "#!lua\nreturn 1"


def connect(
    config: RedisConfig,
    max_connections: int | None = None,
    socket_timeout: float = SOCKET_TIMEOUT,
    retry: Retry | None = None,
) -> Redis:
    """A client that never retries by itself: a script whose reply was lost may have
    run, and only the caller knows whether running it again is safe. At most
    ``max_connections`` (the URL's) at once: a call beyond them waits for a free one,
    which paces a burst of sessions instead of failing it. Each send and each read is
    bounded by ``socket_timeout``."""
    pool = CheckedPool.from_url(
        config.url,
        max_connections=max_connections or config.max_connections,
        timeout=POOL_WAIT,
        retry=retry or Retry(NoBackoff(), 0),
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        # Asked for, not left to the default: redis-py 8.2 falls back to RESP2, with
        # only a warning, where a default HELLO 3 is refused (a Redis that knows no
        # HELLO, or a proxy), and the store then ran on a protocol it is not tested
        # on; asked for, the refusal reaches versions.server_version, which says so.
        protocol=3,
        **_without_maintenance_notifications(),
    )
    return Redis.from_pool(pool)


def connect_listener(config: RedisConfig) -> Redis:
    """The pub/sub listener's client (listener.py): one connection, which only the
    listener makes again once it is lost. redis-py's PubSub has a call that failed on
    its connection make it again, even with no retries (``PubSub._execute``: the
    retry runs its failure callback, which connects, before it gives up): with no
    error the retry handles, nothing runs it, and the call's own error is raised."""
    return connect(config, max_connections=1, retry=Retry(NoBackoff(), 0, supported_errors=()))


def _without_maintenance_notifications() -> dict[str, Any]:
    """What turns redis-py's maintenance notifications off, where its asyncio pool
    has them (8.1 and later). On, as they are by default over RESP3, they make the
    pool hand out a connection Redis closed while it sat idle, rather than make it
    again (redis-py issue #4252): after a restart of Redis, each pooled connection
    failed its next call, a write too. The store has no use for them (a managed
    Redis's notice of its maintenance): a connection its maintenance drops is one
    more dropped connection."""
    if "maint_notifications_config" not in inspect.signature(ConnectionPool).parameters:
        return {}
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


async def check_persistence(client: Redis, config: RedisConfig) -> bool:
    """Refuses a writable store on a Redis that may acknowledge a write a restart loses
    (StoreMisconfigured), unless the URL has ``accept_lossy=true``, when it logs a
    warning: no append-only file (``appendonly no``: a restart goes back to the last
    snapshot, or to nothing without snapshots), or one not fsynced before each reply
    (``appendfsync everysec`` or ``no``, or ``no-appendfsync-on-rewrite yes``, which
    skips the fsync while a snapshot or a rewrite runs: a crash of the machine loses
    the last writes). Acknowledged events would be lost; on such a Redis the store
    changes every epoch at a restart (generation.py), so that clients reload rather
    than resume onto a log cut short (docs/storage-redis.md, Durability). A read-only store writes
    nothing and is opened. Returns whether Redis may lose what it acknowledged: True
    too where Redis refuses to say (a managed Redis may rename or disable CONFIG, or
    an ACL deny it), when the store opens all the same, and says at INFO that it could
    not check, so that the operator knows to. A store on a Redis that may lose writes
    changes every session's epoch when Redis restarts (generation.py)."""
    settings = await read_persistence(client)
    if settings is None:
        log.info(
            "could not check that Redis keeps the writes it acknowledged (CONFIG GET "
            "refused): it should run with appendonly yes and appendfsync always; "
            "taken as one that may lose them, so a restart of Redis changes every "
            "session's epoch"
        )
        return True
    if "appendonly" not in settings or "appendfsync" not in settings:
        return True  # a Redis that does not say: taken as lossy, as it cannot be refused
    danger = persistence_danger(settings)
    if danger is not None:
        if not (config.accept_lossy or config.read_only):
            raise StoreMisconfigured(f"{danger}, or add accept_lossy=true to the store URL")
        log.warning("%s", danger)
    return danger is not None


async def read_persistence(client: Redis) -> dict[str, str] | None:
    """Redis's persistence settings (``PERSISTENCE_SETTINGS``) as it runs now; None
    where it refuses ``CONFIG GET`` (renamed, disabled, or denied by an ACL)."""
    settings: dict[str, str] = {}
    try:
        for name in PERSISTENCE_SETTINGS:
            # One name per CONFIG GET: Redis before 7.0 refuses several in one call,
            # which would read as CONFIG refused.
            said = await read(client, "CONFIG GET", name)
            settings.update({_text(key): _text(value) for key, value in said.items()})
    except redis.exceptions.ResponseError:
        return None
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    return settings


def persistence_danger(settings: dict[str, str]) -> str | None:
    """What in ``settings`` may lose writes Redis acknowledged, said for an operator
    (what a restart then loses, what to set); None if nothing does. Settings missing
    from what CONFIG GET answered (a Redis that does not know them) count as unsafe.
    It does not say that lost seqs go to other events under the same epoch: a store
    that opens on such a Redis (``accept_lossy=true``) or sees it turn so marks the run
    lossy, and its restart changes every epoch (generation.py)."""
    appendonly, appendfsync = settings.get("appendonly"), settings.get("appendfsync")
    if appendonly is None or appendfsync is None:
        return (
            "Redis may lose writes it acknowledged (CONFIG GET says no appendonly or appendfsync)"
        )
    if appendonly != "yes" or appendfsync != "always":
        return (
            f"Redis may lose writes it acknowledged (appendonly {appendonly}, appendfsync "
            f"{appendfsync}): "
            f"{_what_a_restart_loses(appendonly, settings.get('save'))}; "
            "set appendonly yes and appendfsync always"
        )
    if settings.get(NO_FSYNC_ON_REWRITE) == "yes":
        return (
            f"Redis may lose writes it acknowledged ({NO_FSYNC_ON_REWRITE} yes): while "
            "it takes a snapshot or rewrites its append-only file it fsyncs nothing, so "
            f"{_what_a_restart_loses('yes', None)}; set {NO_FSYNC_ON_REWRITE} no"
        )
    return None


async def refuse_replica(client: Redis, config: RedisConfig) -> None:
    """Refuses a writable store on a replica (StoreMisconfigured): a read-only one
    (``replica-read-only yes``, the default) opens and then fails every write, and a
    writable one keeps writes that never reach its primary and that its next sync
    drops. A read-only store (``migrate`` reading from it, ``ls``) is opened. Where
    INFO is refused, nothing is said: the first write tells."""
    if config.read_only:
        return
    try:
        info = await read(client, "INFO", "replication")
    except redis.exceptions.ResponseError:
        return
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    if _text(info.get("role")) == "slave":  # what INFO calls a replica, still in 7.x
        primary = f"{_text(info.get('master_host'))}:{_text(info.get('master_port'))}"
        raise StoreMisconfigured(
            f"Redis is a replica of {primary}: a writable store needs a primary (a "
            "replica refuses writes, or loses them at its next sync); point the store "
            "URL at the primary"
        )


async def refuse_unwaitable(client: Redis, config: RedisConfig) -> None:
    """Refuses a writable store with ``wait_replicas`` whose user Redis refuses
    ``WAIT`` (an ACL): every write would be made on the primary and then left in doubt,
    its publisher closed 1011 again at each resend."""
    if config.read_only or not config.wait_replicas:
        return
    try:
        await client.execute_command("WAIT", 0, 0)
    except redis.exceptions.ResponseError as exc:
        raise StoreMisconfigured(
            f"wait_replicas={config.wait_replicas} needs the WAIT command, which Redis "
            f"refuses this store's user ({exc}); allow it (ACL +wait) or drop wait_replicas"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc


def _what_a_restart_loses(appendonly: str, save: str | None) -> str:
    if save == "" and appendonly != "yes":  # neither a log nor snapshots: nothing survives
        return "a restart of Redis loses every session (it takes no snapshots either)"
    if appendonly == "yes":
        return "a crash of the machine loses the last writes"
    return "a restart of Redis goes back to its last snapshot"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Commands:
    """Commands and scripts on one client. ``publish`` is the command a script
    publishes with, or ``""`` when the caller must publish after ``WAIT``."""

    def __init__(self, client: Redis, config: RedisConfig, sharded: bool) -> None:
        self.client = client
        self._replicas = config.wait_replicas
        self._wait_ms = config.wait_timeout_ms
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self.publish = "" if self._replicas else self.publish_command
        self.before_reload: BeforeReload = None  # the generation's check (generation.py)
        self.eval_ro = False  # Redis has EVAL_RO (7.0 and later): set by the store's open

    async def read(self, *command: Arg) -> Any:
        """A command of ``pool.READ_COMMANDS``: made once more, on a fresh connection,
        if its connection dropped."""
        try:
            return await read(self.client, *command)
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc

    async def call(self, *command: Arg) -> Any:
        """Any command, made once: one that writes may have run though its connection
        dropped."""
        try:
            return await attempt(
                self.client, lambda: self.client.execute_command(*command), only_reads=False
            )
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc

    async def probe_writes(self) -> None:
        """Returns if Redis takes writes now (``WRITE_PROBE``); StorageError if not."""
        await self.call("EVAL", WRITE_PROBE, 0)

    async def run(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """A script whose writes, if any, need no replica's word (made once more where
        its connection dropped only if it reads: ``scripts.READING_SCRIPTS``, called
        read-only where Redis can: ``scripts.eval_commands``)."""
        return await run(self.client, name, keys, args, self.before_reload, self.eval_ro)

    async def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """A script run once per ``(keys, args)`` in one round trip (scripts.run_many)."""
        if not calls:
            return []
        return await run_many(self.client, name, calls, self.before_reload, self.eval_ro)

    async def write(
        self,
        name: str,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        deferred: bool = False,
        notice: bytes | None = None,
        epoch_of: Callable[[Any], str | None] | None = None,
        channel: str = "",
    ) -> Any:
        """Run a writing script; with ``wait_replicas``, wait for the replicas, then
        publish what the script left to the caller (``deferred``: the batch it
        returned as its second item; else ``notice``, if the script did anything:
        first with the epoch ``epoch_of`` finds in the reply, then bare, as the
        scripts publish it)."""
        if not self._replicas:
            return await run(self.client, name, keys, args, self.before_reload)
        try:
            reply = await run_and_wait(
                self.client, name, keys, args, self._replicas, self._wait_ms, self.before_reload
            )
        except ReplicasBehind as behind:
            # What the script wrote stands on the primary, which every later read sees,
            # and its retry (or a rerun of migrate) finds it done and tells no one: told
            # now all the same. Else a close or a delete would leave the session's
            # subscriptions on other instances attached until their server's next look
            # (idle_timeout), and a batch's events would reach them only with the next
            # batch, read from the log: never, if a close came first.
            await self._publish_made(channel, _left(behind.reply, deferred, notice, epoch_of))
            raise
        await self._publish_made(channel, _left(reply, deferred, notice, epoch_of))
        return reply

    async def tell_found_made(self, channel: str, notice: bytes, epoch: str) -> None:
        """Publishes ``notice`` of a write in doubt that a read after it found made
        (``epoch``: the session's, as stored), as :meth:`write` publishes it once a
        reply is in: with ``wait_replicas`` that reply was the only way the notice went
        out, and it was lost. StorageError if the publish fails."""
        await self._publish(channel, [notice + b" " + epoch.encode(), notice])

    async def _publish_made(self, channel: str, payloads: list[Any]) -> None:
        """Publishes what a write that was made left to publish: a failure is its
        write's, whose outcome its caller then does not know (OutcomeUnknown), since
        the write stands."""
        try:
            await self._publish(channel, payloads)
        except OutcomeUnknown:
            raise
        except StorageError as exc:
            raise OutcomeUnknown(f"{exc} (the write was made; its notice failed)") from exc

    async def _publish(self, channel: str, payloads: list[Any]) -> None:
        payloads = [payload for payload in payloads if payload]
        if len(payloads) == 1:
            await self.call(self.publish_command, channel, payloads[0])
        elif payloads:  # in one MULTI, as a script would: nothing published in between
            pipe = self.client.pipeline(transaction=True)
            for payload in payloads:
                pipe.execute_command(self.publish_command, channel, payload)
            try:
                await attempt(self.client, pipe.execute, only_reads=False)
            except redis.exceptions.RedisError as exc:
                raise unreachable(exc) from exc

    async def read_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Commands of ``pool.READ_COMMANDS`` in one round trip (not atomic), made once
        more if their connection dropped; StorageError if Redis is away."""
        if any(command[0] not in READ_COMMANDS for command in commands):
            raise ValueError(f"not only reads: {[command[0] for command in commands]}")

        async def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        try:
            return await attempt(self.client, send, only_reads=True)
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc


def _left(
    reply: Any,
    deferred: bool,
    notice: bytes | None,
    epoch_of: Callable[[Any], str | None] | None,
) -> list[Any]:
    """What a script left the caller to publish, given its ``reply``: the batch it
    returned (``deferred``), or ``notice`` (none: nothing) if it did anything."""
    if deferred:
        return [reply[1]]
    if notice is None or not reply:
        return []
    epoch = None if epoch_of is None else epoch_of(reply)
    return [notice] if epoch is None else [notice + b" " + epoch.encode(), notice]


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again if need be: a
    cancellation that meets a socket timeout at the same instant can come out as a
    TimeoutError, which the task's loop takes for a Redis error and survives (a send
    that dropped it raises it again: cancellation.py)."""
    if task is None:
        return
    await cancel_and_wait(task)
    if not task.cancelled():
        task.exception()  # retrieved: the task's failure was logged where it happened


__all__ = [
    "Commands",
    "StorageError",
    "check_persistence",
    "connect",
    "refuse_replica",
    "stop_task",
]
