"""The removal of sessions from a Redis store (``delete_session``, and cleanup): the
cleanup of expired sessions, and the lease that makes one instance at a time run it.

``cleanup()`` finds candidates in the index (the ``expires`` sorted set up to now, and
the sessions in state ``expired``) and deletes each with ``delete.lua`` in mode
``expired``, which checks the TTL again inside Redis. It is safe to run anywhere at any
time (``cleanup_expired_sessions`` does, on demand); the background loop runs it every
``cleanup_interval`` on the one instance that holds the ``cleanup`` lease, fenced: its
deletes are refused as soon as the lease is no longer its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from bamboo_session.protocol.micros import to_micros
from bamboo_session.tasks import cancel_and_wait, detached

from ..base import StorageError
from ..feed import DELETED
from .client import stop_task
from .layout import DELETED_NOTICE
from .lease import Lease
from .scripts import Fenced, removed_epoch

if TYPE_CHECKING:
    from .storage import RedisStorage

log = logging.getLogger(__name__)

BATCH: Final = 500
# Deletes a cleanup keeps under way at once (each its own script: atomic on its own):
# at most this many, and an eighth of the instance's pool of connections to Redis
# (max_connections), so that live sessions' appends keep the rest.
DELETES_AT_ONCE: Final = 16


def instance_name() -> str:
    """This process, as a lease holder: host, pid and a random part."""
    host = socket.gethostname().replace(":", "_") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class Maintenance:
    """The cleanup of one store instance, and its hold on the cleanup lease."""

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        config = storage.config
        self.lease = Lease(
            storage.redis.client,
            storage.layout.lease("cleanup"),
            storage.instance,
            config.lease_ttl,
        )
        self._interval = config.cleanup_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.runs = 0  # cleanups this instance ran under the lease

    def start(self) -> None:
        if self._interval is not None and not self._storage.config.read_only:
            self._task = detached(self._loop(self._interval), name="bamboo-cleanup")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(StorageError):
            await self.lease.release()

    async def cleanup(self, fence: tuple[str, str] | None = None) -> int:
        """Remove every session whose TTL has passed; how many went."""
        storage = self._storage
        index = storage.layout.index
        removed = 0
        while True:
            now = to_micros(storage.now())
            candidates = await storage.redis.read(
                "ZRANGEBYSCORE", index + "expires", "-inf", now, "LIMIT", 0, BATCH
            )
            candidates += await storage.redis.read("ZRANGE", index + "state:expired", 0, BATCH - 1)
            ids = sorted({candidate.decode() for candidate in candidates})
            done = await self.remove(ids, only_expired=True, fence=fence)
            removed += done
            if done == 0 or len(ids) < BATCH:
                return removed

    async def remove(
        self,
        session_ids: Sequence[str],
        only_expired: bool,
        fence: tuple[str, str] | None = None,
    ) -> int:
        """Delete sessions, each atomically with its index entries and the notice to
        every instance; with ``only_expired`` only those whose TTL passed, and with a
        lease's ``fence`` only while that lease is held (else Fenced). Returns how
        many went."""
        storage = self._storage
        layout, redis = storage.layout, storage.redis
        lease_key, token = fence or ("", "")
        mode = "expired" if only_expired else "any"
        pending = iter(session_ids)
        removed = 0
        failures: list[BaseException] = []

        async def remove_pending() -> None:
            nonlocal removed
            for session_id in pending:
                if failures:
                    return
                channel = layout.channel(session_id)
                try:
                    done = await redis.write(
                        "delete",
                        layout.session_keys(session_id),
                        [session_id, layout.index, redis.publish, channel, mode, lease_key, token],
                        notice=DELETED_NOTICE,
                        epoch_of=removed_epoch,
                        channel=channel,
                    )
                except Exception as exc:  # the first stops the others (Fenced, Redis away)
                    failures.append(exc)
                    return
                if done:
                    removed += 1
                    storage.live.feed.end(
                        session_id, DELETED, storage.served_epoch(removed_epoch(done))
                    )

        # Several under way at once: one at a time, each waited for its own round trip
        # and Redis's sync of it (appendfsync always), some 10 deletes a second on a
        # loaded machine, hours for 50,000 (bench/RESULTS.md, Mass expiry under live
        # load); together they share Redis's syncs.
        at_once = min(DELETES_AT_ONCE, storage.config.max_connections // 8, len(session_ids))
        await asyncio.gather(*(remove_pending() for _ in range(max(1, at_once))))
        if failures:
            raise failures[0]
        return removed

    async def _loop(self, interval: float) -> None:
        lease = self.lease
        next_run = time.monotonic() + interval
        while not self._stopping:
            await asyncio.sleep(min(lease.ttl / 3, max(0.0, next_run - time.monotonic())))
            try:
                if not await lease.keep():
                    next_run = time.monotonic() + interval
                    continue
                if time.monotonic() < next_run:
                    continue
                next_run = time.monotonic() + interval
                removed = await self._round_under_lease()
                self.runs += 1
                if removed:
                    log.info("removed %d expired sessions", removed)
            except Fenced:
                log.warning("lost the cleanup lease during a cleanup; another instance has it")
                lease.token = None
            except StorageError as exc:
                log.warning("cleanup failed: %s", exc)

    async def _round_under_lease(self) -> int:
        """A cleanup round, fenced by the lease, which is renewed every third of its ttl
        meanwhile: a round of many sessions outlasts the lease (30 s), and unrenewed,
        its deletes were fenced at the lease's end, the round given up, and the rest
        left for the round an interval later, itself cut short the same way."""
        lease = self.lease
        round_ = asyncio.create_task(self.cleanup(fence=lease.fence_args()))
        try:
            while not round_.done():
                await asyncio.wait([round_], timeout=lease.ttl / 3)
                if not round_.done():
                    # Lost (False), or Redis away (raises): the round's next delete is
                    # fenced, or fails, and ends it.
                    with contextlib.suppress(StorageError):
                        await lease.renew()
            return round_.result()
        finally:
            if not round_.done():  # this loop was stopped: the round with it
                await cancel_and_wait(round_)
