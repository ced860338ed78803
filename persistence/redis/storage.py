"""RedisStorage: the storage contract on a Redis server that several Bamboo instances
share (``redis://host:port/db?prefix=bamboo``).

Every write is one Lua script, run atomically by Redis (``scripts.py``, the ``*.lua``
files): seq assignment, the idempotency window, metadata and index updates and the
pub/sub notice of an append happen together or not at all, whichever instance runs
them. Live delivery (``live.py``): the append script publishes each batch on the
session's channel, and every instance's listener hands it to its subscriptions, which
read from the stream whatever they did not get in order. An instance offers its own
appends to its own subscriptions at once, without the round trip.

Durability is Redis's: see docs/storage-redis.md (``appendonly yes`` and
``appendfsync always`` for acknowledged-means-on-disk; ``wait_replicas`` for copies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Self

from redis.asyncio import Redis

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import (
    Message,
    MessageEvent,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from ..base import (
    Appended,
    AppendItem,
    AppendOne,
    HistoryPage,
    OwnerCaps,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    StorageError,
    StoreMisconfigured,
)
from ..close_once import CloseOnce
from ..feed import HISTORY_LOST, READ_BEHIND_BYTES, FeedSubscription
from ..url import without_password
from . import appending, creating, importing, reading, state_writes
from .client import Commands, connect, connect_listener
from .clock import RedisClock
from .config import RedisConfig
from .durability import DurabilityWatch
from .eviction import warn_of_eviction
from .generation import Generation
from .layout import Layout, metadata_from
from .live import Live
from .pool import CheckedPool
from .queries import LIST_BYTES, LIST_STEP, list_sessions
from .recount import RedisRecounter
from .reports import StoreReports
from .scripts import HistoryLost
from .server_checks import check_persistence, refuse_replica, refuse_unwaitable
from .store_format import check_format
from .versions import require_redis, server_version

EVERYTHING: Final = 2**31


UNSEEN_RESTARTS: Final = (
    "Redis refuses INFO to the store's user (an ACL), so the store cannot tell when Redis "
    "restarts; on a Redis that may lose writes it acknowledged (or that does not say: "
    "CONFIG refused) a restart would keep every epoch over a log cut short. Allow INFO "
    "(ACL +info), or run Redis with appendonly yes and appendfsync always and allow "
    "CONFIG GET"
)


class RedisStorage(StoreReports, AppendOne):
    """The storage contract on Redis; ``await RedisStorage.open(config)``; what it says
    of itself beyond that, in reports.py."""

    # Several instances create sessions: a user's caps are counted in create.lua.
    counts_owner_caps: Final = True

    def __init__(self, config: RedisConfig, client: Redis, sharded: bool) -> None:
        self.config = config
        self.layout = Layout(config.prefix)
        self.redis = Commands(client, config, sharded)
        self.live = Live(self.redis, self.layout, connect_listener(config), sharded)
        self.generation = Generation(client, self.layout, self.live.feed, config.read_only)
        self.live.generation = self.generation
        self.live.listener.served = self.generation.served
        self.redis.before_reload = self.generation.check
        pool = client.connection_pool
        if isinstance(pool, CheckedPool):  # every connection made checks the generation
            pool.on_connect = self.generation.on_connect
        self.durability = DurabilityWatch(client, self.generation, config.heartbeat)
        self.clock = RedisClock(self.redis)  # Redis's TIME
        self._open = True
        self._closing = CloseOnce()
        self.list_step = LIST_STEP  # candidates a listing reads per script call
        self.list_bytes = LIST_BYTES  # what a listing in steps may hold meanwhile
        self.stepped_listing = asyncio.Lock()  # one listing in steps at a time (queries.py)
        from .maintenance import Maintenance, instance_name  # they import this module

        self.instance = instance_name()  # in lease tokens and presence notices
        self.maintenance = Maintenance(self)
        from .presence import RedisPresence

        self.presence = RedisPresence(self)
        from .user_connections import RedisUserConnections

        # A reader (a replica) takes no writes: its server counts its own connections.
        self.user_connections = None if config.read_only else RedisUserConnections(self)

    @classmethod
    async def open(cls, config: RedisConfig) -> Self:
        client = connect(config)
        try:
            # Sharded pub/sub and EVAL_RO too; and the first connection, authenticated.
            require_redis(await server_version(client, without_password(config.url)))
            sharded = config.pubsub != "classic"
            evicting = await warn_of_eviction(client)
            await refuse_replica(client, config)
            await refuse_unwaitable(client, config)
            lossy = await check_persistence(client, config)
            found = await check_format(client, Layout(config.prefix), not config.read_only)
            storage = cls(config, client, sharded)
            storage.store_format = f"redis/{found}"
            storage.redis.eval_ro = True
            storage.generation.lossy = lossy
            storage.durability.evicting = evicting
            await storage.generation.check()
            if lossy and not storage.generation.sees_restarts and not config.read_only:
                raise StoreMisconfigured(UNSEEN_RESTARTS)
            await storage.live.listener.start()
            await storage.clock.start()  # the last step that may fail: its task ends here
        except BaseException:
            await client.aclose()
            raise
        storage.maintenance.start()
        if not config.read_only:  # a reader writes nothing a restart could lose
            storage.durability.start()
        return storage

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the background work, the listener and the client. Safe to call twice: a
        call made while another closes returns once that close has ended (CloseOnce)."""
        await self._closing.run(self._close)

    async def _close(self) -> None:
        self._open = False
        try:
            await self.maintenance.stop()
            await self.durability.stop()
            await self.clock.stop()
        finally:  # the connections closed whatever the close is cancelled at
            self.live.feed.end_all()
            try:
                await self.live.listener.close()
            finally:
                await self.redis.client.aclose()

    # -- sessions -------------------------------------------------------------------

    async def create_session(
        self,
        session: Session,
        *,
        replace_expired: bool = False,
        made_now: bool = False,
        owner_caps: OwnerCaps | None = None,
    ) -> None:
        await creating.create_session(self, session, replace_expired, made_now, owner_caps)

    async def load_session(self, session_id: str) -> Session | None:
        try:
            meta, _, messages = await reading.read_history(self, session_id, ["all"])
        except SessionNotFound:
            return None
        return Session(meta, messages)

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        flat = await self.redis.read("HGETALL", self.layout.meta(check_session_id(session_id)))
        return self.served_metadata(flat) if flat else None

    async def delete_session(self, session_id: str) -> None:
        self.require_writable()
        await self.maintenance.remove([check_session_id(session_id)], only_expired=False)

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        return await list_sessions(self, filter)

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]:
        result = await self.list_sessions(SessionFilter(user_id=user_id, limit=EVERYTHING))
        return result.sessions

    async def get_session_history(self, session_id: str) -> list[Message]:
        _, _, messages = await reading.read_history(self, session_id, ["all"])
        return messages

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        end = "" if before is None else before  # '': the end
        args: list[str | int] = ["page", limit, end, reading.script_budget(max_bytes)]
        return await reading.history_page(self, session_id, args, epoch)

    async def get_history_from(
        self,
        session_id: str,
        start: int,
        limit: int,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        args: list[str | int] = ["from", start, limit, reading.script_budget(max_bytes)]
        return await reading.history_page(self, session_id, args, epoch)

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        return await self.append_event(session_id, MessageEvent(message), key)

    async def update_session_state(
        self,
        session_id: str,
        state: SessionState,
        *,
        epoch: str | None = None,
        unless_updated_since: datetime | None = None,
    ) -> SessionMetadata:
        return await state_writes.update_session_state(
            self, session_id, state, epoch, unless_updated_since
        )

    async def touch(self, session_id: str, *, epoch: str | None = None) -> None:
        await state_writes.touch(self, session_id, epoch)

    async def cleanup_expired_sessions(self) -> int:
        self.require_writable()
        return await self.maintenance.cleanup()

    # -- events ---------------------------------------------------------------------

    async def append_events(
        self, session_id: str, items: Sequence[AppendItem], *, epoch: str | None = None
    ) -> list[Appended]:
        config = self.config
        return await appending.append_events(
            self, session_id, items, epoch, config.max_session_bytes, config.max_user_bytes
        )

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
        *,
        epoch: str | None = None,
    ) -> list[StoredEvent]:
        session_id = check_session_id(session_id)
        return await reading.read_events(self, session_id, after_seq, limit, max_bytes, epoch)

    async def subscribe(self, session_id: str, after_seq: int) -> FeedSubscription:
        session_id = check_session_id(session_id)
        self._require_open()
        subscription: FeedSubscription | None = None

        async def read(after: int, limit: int) -> list[StoredEvent]:
            # Only the log it subscribed to: another instance may have replaced the
            # session (an expired one, by a create) before this one heard of it.
            epoch = None if subscription is None else subscription.epoch
            try:
                return await reading.read_events(
                    self, session_id, after, limit, READ_BEHIND_BYTES, epoch=epoch
                )
            except HistoryLost:  # its log's generation is gone: its viewers resume (1012)
                if subscription is not None:
                    subscription.end(HISTORY_LOST)
                return []

        subscription = await self.live.subscribe(session_id, after_seq, read)
        return subscription

    async def last_seq(self, session_id: str, *, epoch: str | None = None) -> int:
        meta = self.layout.meta(check_session_id(session_id))
        seq, found = await self.redis.read("HMGET", meta, "seq", "epoch")  # in one read
        if found is None or (epoch is not None and self.generation.served(found.decode()) != epoch):
            raise SessionNotFound(f"session {session_id!r} not found")
        return int(seq)

    async def epoch(self, session_id: str) -> str:
        return self.generation.served((await self._field(session_id, "epoch")).decode())

    # -- import (SessionImport) -----------------------------------------------------

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        await importing.import_events(self, check_session_id(session_id), events)
        self.live.publish(session_id, list(events))

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        await importing.import_metadata(self, metadata)

    # -- recount (StoredBytesRecount) -----------------------------------------------

    def bytes_recounter(self, *, dry_run: bool = False) -> RedisRecounter:
        """What ``bamboo-session recount`` needs: persistence/redis/recount.py."""
        return RedisRecounter(self, dry_run=dry_run)

    # -- helpers --------------------------------------------------------------------

    def served_metadata(self, flat: list[bytes] | dict[bytes, bytes]) -> SessionMetadata:
        """A session's metadata hash, its epoch as clients see it (generation.py)."""
        meta = metadata_from(flat)
        meta.epoch = self.generation.served(meta.epoch)
        return meta

    def served_epoch(self, stored: str | None) -> str | None:
        return None if stored is None else self.generation.served(stored)

    async def _field(self, session_id: str, name: str) -> bytes:
        meta = self.layout.meta(check_session_id(session_id))
        value = await self.redis.read("HGET", meta, name)
        if value is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        assert isinstance(value, bytes)
        return value

    def _require_open(self) -> None:
        if not self._open:
            raise StorageError("storage is closed")

    def require_writable(self) -> None:
        self._require_open()
        if self.config.read_only:
            raise StorageError("storage is open read-only")
