"""The store's connection to Redis, and the one way its commands and scripts are run:
no silent retries (a read is made once more where its connection dropped: pool.py),
Redis errors as the contract's exceptions, and the ``WAIT`` for replicas
(``wait_replicas``) before anything written is acknowledged or published (a write
they fall short on is published all the same, and raises OutcomeUnknown: see
``Commands.write``)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bamboo_session.tasks import cancel_and_wait

from ..base import OutcomeUnknown, StorageError
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

POOL_WAIT = 10.0  # seconds a call waits for a free connection before it fails
# Seconds a send or a read waits on Redis before its call fails (and its connection is
# dropped): a Redis that stops reading or answering fails calls, not hangs them.
SOCKET_TIMEOUT = 10.0
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
        **without_maintenance_notifications(),
    )
    return Redis.from_pool(pool)


def connect_listener(config: RedisConfig) -> Redis:
    """The pub/sub listener's client (listener.py): one connection, which only the
    listener makes again once it is lost. redis-py's PubSub has a call that failed on
    its connection make it again, even with no retries (``PubSub._execute``: the
    retry runs its failure callback, which connects, before it gives up): with no
    error the retry handles, nothing runs it, and the call's own error is raised."""
    return connect(config, max_connections=1, retry=Retry(NoBackoff(), 0, supported_errors=()))


def without_maintenance_notifications() -> dict[str, Any]:
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


__all__ = ["Commands", "StorageError", "connect", "stop_task"]
