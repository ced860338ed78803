"""The pub/sub listener of a Redis store: one connection and one task per store
instance, subscribed to the channels of the sessions this process has subscriptions
for, dispatching what arrives to the store's :class:`Feed`.

- A session's channel is subscribed when its first subscription opens (:meth:`watch`
  returns once Redis confirmed it, so nothing published after that is missed) and
  unsubscribed when its last one closes. The commands are sent by a task of the
  listener's, one at a time, each confirmed before the next (subscribing.py): a
  cancelled watch never cuts one short, which would drop the shared connection.
- Event batches go to :meth:`Feed.publish`; ``closed`` and ``deleted`` notices end the
  session's subscriptions; presence notices go to the presence callback. A batch or a
  notice that names its epoch is for the subscriptions of that epoch only (a session
  deleted and created again, or replaced, is another log); the bare notice a script
  publishes after the one with its epoch, for older listeners, is skipped.
- A lost connection is noticed (an error, or no answer to a ping within
  ``PING_TIMEOUT``). Redis's refusal of the ping for its disk (``MISCONF``: Redis
  refuses PING as it refuses writes while it cannot persist) is an answer: the
  connection is fine, and still brings what is published (bench/redis_disk_full.py:
  it was taken for a loss, a reconnect and every session caught up again each
  ``PING_EVERY`` of silence, for as long as the disk stayed full). The listener
  (never redis-py: ``connect_listener``, ``still_connected``) connects again,
  subscribes to every channel it should, then has the store catch every session up
  (``on_reconnect``): whatever was published meanwhile is read from the streams by
  the subscriptions themselves.
- A :meth:`watch` while the connection is down does not wait out the backoff: it has
  the listener try now, and waits for that try: connected, it subscribes; failed, it
  fails (tries.py: a crowd of watches makes one try or two).
- Any other failure of the reader (redis-py failing on what the connection brought: a
  push it cannot read, a transport torn down under a write) is handled as a lost
  connection too, the store not ready meanwhile: the task never ends while the store
  is open, which would leave it ready with no event reaching any viewer. A lost
  connection is logged as a warning; a failure that is a bug, ours or redis-py's,
  with its traceback the first time of its kind (listener_log.py).
- A message on a session's channel that this module cannot handle (a batch that is no
  JSON, a notice it cannot read: published by any client of the Redis, or by an
  instance of another version during a rolling upgrade) is dropped and counted
  (``unreadable``), and the session's subscriptions are caught up from the store, as
  after a reconnect, so whatever the message carried still reaches them, once. The
  connection is fine, so it is kept: a reconnect per such message would take the
  store out of readiness, and delay every session's viewers, for as long as they
  came. The first of each kind is logged with its traceback; later ones as a count,
  at most once a minute (listener_log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bamboo_session.tasks import detached

from ..base import StorageError
from ..feed import CLOSED, DELETED, Feed
from .client import stop_task
from .layout import (
    CLOSED_NOTICE,
    DELETED_NOTICE,
    PRESENCE_NOTICE,
    Layout,
    events_from_batch,
)
from .listener_log import ListenerLog
from .pool import address, described
from .subscribing import CONFIRM_TIMEOUT, Subscriber, still_connected
from .tries import CLOSING, Tries

log = logging.getLogger(__name__)

POLL: Final = 1.0  # seconds a read waits before the listener looks at its health
PING_EVERY: Final = 5.0  # seconds of silence before a ping
PING_TIMEOUT: Final = 10.0  # seconds of silence after which the connection is dead
RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# How Redis refuses a ping while it cannot persist (a failed snapshot with
# stop-writes-on-bgsave-error, a failed AOF write): only a ping or a write gets it,
# and this connection sends no write, so it is the ping's answer.
REFUSED_PING: Final = "MISCONF "

OnReconnect = Callable[[Collection[str]], Awaitable[None]]
OnPresence = Callable[[str, bytes], None]


class Listener:
    """Subscribes to the sessions the feed has subscribers for (see module docstring)."""

    def __init__(
        self,
        client: Redis,
        layout: Layout,
        feed: Feed,
        sharded: bool,
        on_reconnect: OnReconnect,
    ) -> None:
        self._client = client  # with no retries: a lost connection must be seen here
        self._layout = layout
        self._feed = feed
        self._on_reconnect = on_reconnect
        self.on_presence: OnPresence | None = None
        # A notice's epoch as the store serves it (generation.py): what the feed's
        # subscriptions hold. The store sets it; stored epochs are served as they are.
        self.served: Callable[[str], str] = str
        self._pubsub: PubSub | None = None
        # Sessions whose notice with an epoch came: the bare one after it is skipped.
        self._bare_next: dict[str, bytes] = {}
        self._connected = asyncio.Event()
        self._tries = Tries(CONFIRM_TIMEOUT)
        self._task: asyncio.Task[None] | None = None
        self._catch_up: asyncio.Task[None] | None = None
        self._closing = False
        self._broken = False
        self._last_heard = 0.0
        self.address = address(client)
        self._log = ListenerLog(log, self.address)
        # Why the connection is not there now, for /readyz: its last failure's error
        # (a failed connect: Redis's address and "Connection refused").
        self.lost_by = "not connected yet"
        self._subscriber = Subscriber(layout, feed, sharded, self._connection, self._log)
        self._subscriber.on_dropped = self._forget
        self.reconnects = 0
        self._lagging: set[str] = set()  # sessions to catch up after an unreadable message
        self._lagging_catch_up: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def subscribed(self) -> Collection[str]:
        """Sessions whose channel Redis confirmed, on the connection there is now."""
        return frozenset(self._subscriber.subscribed)

    @property
    def unreadable(self) -> int:
        """Messages on session channels dropped as unreadable so far."""
        return self._log.unreadable

    @property
    def tries(self) -> int:
        """Tries to connect so far: the first, and every one after a loss."""
        return self._tries.made

    async def start(self) -> None:
        await self._connect()
        self._task = detached(self._run(), name="bamboo-redis-listener")

    async def close(self) -> None:
        self._closing = True
        # First: stopping the tasks takes turns of the loop, in which this close may
        # be cancelled, and a watch waiting for a try would wait out CONFIRM_TIMEOUT.
        self._tries.close()
        for task in (self._task, self._catch_up, self._lagging_catch_up):
            await stop_task(task)
        await self._subscriber.stop()
        await self._disconnect()

    # -- what the store asks ------------------------------------------------------------

    async def watch(self, session_id: str) -> None:
        """Return once the session's channel is subscribed (confirmed by Redis). With
        the connection down, once the try to connect it asks for succeeded. Cancelled,
        it leaves the subscribing to the listener's task (subscribing.py)."""
        with self._subscriber.pinned(session_id):
            if not self._connected.is_set():
                if self._closing:
                    raise StorageError(f"redis unavailable: {CLOSING}")
                await self._tries.next_one()
            await self._subscriber.subscribed_to(session_id)

    def unwatch(self, session_id: str) -> None:
        """The session's last subscription closed: unsubscribe, in the background."""
        if (
            session_id in self._subscriber.subscribed
            and self._connected.is_set()
            and not self._closing
        ):
            self._subscriber.sync_soon()

    def _connection(self) -> PubSub | None:
        """The connection to subscribe on: None while there is none."""
        return self._pubsub if self._connected.is_set() else None

    def _forget(self, session_id: str) -> None:
        """The session's channel is being unsubscribed: no notice of it is due."""
        self._bare_next.pop(session_id, None)

    # -- reading --------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    await self._connect()
                    self._resubscribe()
                    attempt = 0
                    continue
                await self._read(pubsub)
            except Exception as exc:  # anything but a cancellation: see the docstring
                self._log.failure("redis pub/sub connection lost", exc, self._connected.is_set())
                self.lost_by = described(exc)
                await self._disconnect()
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                await self._tries.back_off(delay, RECONNECT_DELAYS[0])
                attempt += 1

    async def _read(self, pubsub: PubSub) -> None:
        if self._broken:
            raise StorageError("the pub/sub connection is to be replaced")
        still_connected(pubsub)
        loop = asyncio.get_running_loop()
        try:
            message = await pubsub.get_message(timeout=POLL)
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith(REFUSED_PING):
                raise
            message = None  # Redis answered the ping (module docstring)
            self._last_heard = loop.time()
        now = loop.time()
        if message is None:
            silent = now - self._last_heard
            if silent > PING_TIMEOUT:
                raise StorageError("no answer from redis on the pub/sub connection")
            if silent > PING_EVERY:
                still_connected(pubsub)
                await pubsub.ping()
            return
        self._last_heard = now
        self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("message", "smessage"):
            session_id = self._layout.session_of_channel(message["channel"])
            if session_id is not None:
                try:
                    self._deliver(session_id, message["data"])
                except Exception as exc:  # what was published, not the connection
                    self._unreadable(session_id, exc)
        elif kind in ("subscribe", "ssubscribe", "unsubscribe", "sunsubscribe"):
            self._subscriber.confirmed(message["channel"])

    def _deliver(self, session_id: str, data: bytes) -> None:
        if self._bare_next and self._bare_next.pop(session_id, None) == data:
            return  # the bare copy of the notice just heard with its epoch
        if data[:1] == b"[":
            if self._feed.has_subscribers(session_id):
                epoch, events = events_from_batch(data)
                self._feed.publish(session_id, events, epoch)
        elif data == CLOSED_NOTICE:
            self._feed.end(session_id, CLOSED)
        elif data == DELETED_NOTICE:
            self._feed.end(session_id, DELETED)
        elif data[:1] == PRESENCE_NOTICE and self.on_presence is not None:
            self.on_presence(session_id, data[1:])
        else:
            notice, space, of = data.partition(b" ")
            if space and notice in (CLOSED_NOTICE, DELETED_NOTICE):
                reason = CLOSED if notice == CLOSED_NOTICE else DELETED
                self._feed.end(session_id, reason, self.served(of.decode()))
                self._bare_next[session_id] = notice

    def _unreadable(self, session_id: str, exc: Exception) -> None:
        """A message on the session's channel could not be handled: dropped, counted,
        logged (see the module docstring), and the session caught up from the store."""
        self._log.unreadable_message(session_id, exc)
        if self._closing or not self._feed.has_subscribers(session_id):
            return
        self._lagging.add(session_id)
        if self._lagging_catch_up is None or self._lagging_catch_up.done():
            self._lagging_catch_up = detached(self._catch_up_lagging(), "bamboo-redis-lagging")

    async def _catch_up_lagging(self) -> None:
        """Catches up the sessions an unreadable message left behind, those that come
        meanwhile in the next round; on a failure, the reader starts over with a fresh
        connection, which catches every session up."""
        while self._lagging:
            sessions, self._lagging = self._lagging, set()
            try:
                await self._on_reconnect(sessions)
            except Exception as exc:
                self._log.failure("catching up after an unreadable message failed", exc, True)
                self._broken = True
                self._lagging.clear()
                return

    # -- connecting -----------------------------------------------------------------------

    async def _connect(self) -> None:
        """One try to connect; its outcome told to the watches waiting for it."""
        self._tries.begin()
        pubsub = self._client.pubsub()
        try:
            await pubsub.connect()
        except BaseException as exc:
            self._tries.failed(exc)
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._broken = False
        self._subscriber.lost()  # nothing subscribed on the new one yet
        self._bare_next = {}
        self._last_heard = asyncio.get_running_loop().time()
        self._connected.set()
        self._tries.connected()

    def _resubscribe(self) -> None:
        """After a reconnect: subscribe again, then catch every session up. In a task
        of its own, since confirmations come through this listener's reads."""
        self.reconnects += 1
        log.info(
            "redis pub/sub connection back; catching %d sessions up", len(self._subscriber.wanted())
        )
        self._catch_up = detached(self._resubscribe_and_catch_up(), "bamboo-redis-catch-up")

    async def _resubscribe_and_catch_up(self) -> None:
        try:
            await self._subscriber.sync()
            await self._on_reconnect(set(self._subscriber.subscribed))
        except Exception as exc:  # the reader starts over with a fresh connection
            self._log.failure("catching up after a reconnect failed", exc, True)
            self._broken = True

    async def _disconnect(self) -> None:
        self._connected.clear()
        pubsub, self._pubsub = self._pubsub, None
        self._subscriber.lost()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
