"""The subscribing part of a Redis store's pub/sub listener (listener.py): which
sessions' channels its connection is subscribed to, and the one task of the listener
that changes them with SUBSCRIBE and UNSUBSCRIBE.

- The wanted channels are those of the sessions the feed has subscriptions for, and of
  the sessions being watched (:meth:`Subscriber.pinned`). Changes go out one command at
  a time, each confirmed by Redis before the next, so a confirmation is never mistaken
  for another's; the task runs until Redis has exactly the wanted channels.
- The commands are sent by the listener's own task, never by the task that asked for
  them: a watch (``RedisStorage.subscribe``) waits for that task's outcome
  (:meth:`Subscriber.subscribed_to`), and its cancellation ends its wait only. A
  cancellation that reached a send would make redis-py drop the connection every
  session of the instance shares (cancellation.py keeps it so too), which every
  session would then pay for with a resubscribe and a catch-up from the store (3 or 4
  reconnects in 300 watches cancelled as they subscribed, before:
  tests/test_redis_watch_cancelled_shared.py). A channel subscribed for a watch that
  was cancelled meanwhile is unsubscribed by the same task, next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Final

import redis.exceptions
from redis.asyncio.client import PubSub

from bamboo_session.tasks import detached

from ..base import StorageError
from ..feed import Feed
from .client import stop_task
from .layout import Layout
from .listener_log import ListenerLog
from .pool import described, from_redis_py
from .tries import CLOSING

CONFIRM_TIMEOUT: Final = 10.0
LOST: Final = "redis unavailable: pub/sub connection lost"


class Subscriber:
    """The channels of one listener's connection (see module docstring)."""

    def __init__(
        self,
        layout: Layout,
        feed: Feed,
        sharded: bool,
        connection: Callable[[], PubSub | None],
        failures: ListenerLog,
    ) -> None:
        self._layout = layout
        self._feed = feed
        self._sharded = sharded
        self._connection = connection  # the listener's, while it is connected; else None
        self._failures = failures
        self.on_dropped: Callable[[str], None] = lambda _session_id: None
        self.subscribed: set[str] = set()  # sessions whose channel Redis confirmed
        self._pinned: dict[str, int] = {}  # sessions being watched, not yet in the feed
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def wanted(self) -> set[str]:
        return set(self._feed.sessions()) | set(self._pinned)

    @contextlib.contextmanager
    def pinned(self, session_id: str) -> Iterator[None]:
        """The session's channel is wanted meanwhile (a watch of it under way)."""
        self._pinned[session_id] = self._pinned.get(session_id, 0) + 1
        try:
            yield
        finally:
            left = self._pinned[session_id] - 1
            if left:
                self._pinned[session_id] = left
            else:
                del self._pinned[session_id]

    async def subscribed_to(self, session_id: str) -> None:
        """Has the listener's task bring the channels in line, and waits for its
        outcome: returns once Redis confirmed the (pinned) session's channel;
        StorageError when it cannot. Cancelled, the wait ends, never the task."""
        if self._closed:
            raise StorageError(f"redis unavailable: {CLOSING}")
        task = self.sync_soon()
        await asyncio.wait([task])
        if task.cancelled():  # stopped by the listener's close
            raise StorageError(f"redis unavailable: {CLOSING}")
        failure = task.exception()
        if failure is not None:
            raise failure
        if session_id not in self.subscribed:
            raise StorageError("redis unavailable: could not subscribe")

    def sync_soon(self) -> asyncio.Task[None]:
        """The listener's task that brings the channels in line: the one running (it
        looks at what is wanted again after each command), else a new one."""
        task = self._task
        if task is None or task.done():
            task = detached(self.sync(), name="bamboo-redis-subscribing")
            task.add_done_callback(self._ended)
            self._task = task
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        failure = task.exception()  # retrieved: its watches, if any, raise it
        if isinstance(failure, Exception) and not isinstance(failure, StorageError):
            self._failures.failure("changing the pub/sub subscriptions failed", failure, True)

    async def stop(self) -> None:
        """The listener closes: its task stopped, and no other started."""
        self._closed = True
        await stop_task(self._task)

    # -- the commands -------------------------------------------------------------------

    async def sync(self) -> None:
        """Subscribe and unsubscribe until Redis has exactly the wanted channels. Only
        in the listener's tasks: this one's, and its catch-up after a reconnect."""
        async with self._lock:
            while True:
                pubsub = self._connection()
                if pubsub is None:
                    return
                wanted = self.wanted()
                add = wanted - self.subscribed
                drop = self.subscribed - wanted
                if add:
                    await self._command(pubsub, add, subscribe=True)
                    self.subscribed |= add
                elif drop:
                    self.subscribed -= drop
                    for session_id in drop:
                        self.on_dropped(session_id)
                    await self._command(pubsub, drop, subscribe=False)
                else:
                    return

    async def _command(self, pubsub: PubSub, sessions: set[str], subscribe: bool) -> None:
        channels = [self._layout.channel(session_id) for session_id in sorted(sessions)]
        loop = asyncio.get_running_loop()
        waiting = {channel.encode(): loop.create_future() for channel in channels}
        self._confirming.update(waiting)
        try:
            still_connected(pubsub)
            if self._sharded:
                for channel in channels:  # one by one: on a Cluster each has its own slot
                    still_connected(pubsub)  # as it may have been lost under the last one
                    if subscribe:
                        await pubsub.ssubscribe(channel)
                    else:
                        await pubsub.sunsubscribe(channel)
            elif subscribe:
                await pubsub.subscribe(*channels)
            else:
                await pubsub.unsubscribe(*channels)
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await asyncio.gather(*waiting.values())
        except StorageError:
            raise  # the connection lost under the command (lost()): said already
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise StorageError(f"redis unavailable: pub/sub: {described(exc)}") from exc
        except Exception as exc:
            # redis-py's PubSub fails so rather than with a ConnectionError when its
            # connection was torn down under this command: by the reader, which saw it
            # drop (any error then), or by the event loop (pool.py): the same loss.
            if self._connection() is pubsub and not from_redis_py(exc):
                raise
            what = described(exc)
            raise StorageError(f"redis unavailable: pub/sub connection lost: {what}") from exc
        finally:
            for name, waiter in waiting.items():
                self._confirming.pop(name, None)
                _settle(waiter)

    # -- what the listener tells it -----------------------------------------------------

    def confirmed(self, channel: bytes) -> None:
        """Redis confirmed a subscribe or an unsubscribe of ``channel``."""
        waiter = self._confirming.get(channel)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        """The connection is gone (or a new one made): nothing is subscribed on it, and
        the command under way fails."""
        self.subscribed = set()
        for waiter in self._confirming.values():
            if not waiter.done():
                waiter.set_exception(StorageError(LOST))


def still_connected(pubsub: PubSub) -> None:
    """A lost connection (StorageError) unless ``pubsub``'s is up, just before a call
    on it: redis-py would connect it again, or take the pool's for a closed PubSub,
    behind the listener's back. Nothing is awaited between this test and redis-py's."""
    connection: Any = pubsub.connection  # typed None by redis-py
    if connection is None or not connection.is_connected:
        raise StorageError(LOST)


def _settle(waiter: asyncio.Future[None]) -> None:
    """A confirmation no longer waited for: cancelled, or its error (a lost
    connection, set by :meth:`Subscriber.lost`) marked as seen, so that asyncio does
    not report it as never retrieved."""
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled():
        waiter.exception()
