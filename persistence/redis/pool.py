"""The pool every call of the Redis store runs on (``CheckedPool``), and what a call
does when Redis dropped its connection (``attempt``).

A restart of Redis closes every connection at once (so may a network fault), and
each pooled connection would fail its first call after it. So:

- A connection Redis closed while it sat idle in the pool is made again before it
  carries a call: redis-py's own check when the pool hands a connection out, which
  redis-py 8.1 skips while maintenance notifications are on, as they are by default
  (redis-py issue #4252): ``connect`` (client.py) turns them off.
- A call whose connection dropped marks every connection made before the call began:
  Redis closed them all, so each is made again before its next call, also one whose
  close has not reached this process yet (the pool could not tell it from a live
  one). A write after a restart then fails at most once per connection that was in
  use, not once per pooled connection.
- A call that only reads is made once more, on a fresh connection, when its
  connection dropped: a read made twice changes nothing. Which calls read is a
  property of what is called (``READ_COMMANDS``, and ``scripts.READING_SCRIPTS``),
  never a setting of the client, so no write can be made twice by mistake: a
  script whose reply was lost may have run, and only its caller knows whether
  running it again is safe (an idempotency key). redis-py's own retries stay off.

Every connection made, first or again, goes through ``on_connect`` (the store's
generation check, generation.py) before it carries a call: the retried read's too.

A transport torn down under redis-py (the peer reset the connection just before a
write) can fail a call with another error than the ConnectionError redis-py means to
raise: uvloop's RuntimeError ("the handler is closed"), asyncio's TypeError or
AttributeError on Python 3.12 to 3.14.0 (redis-py issue #4287). redis-py has dropped
that connection by then (its connection layer disconnects on any error); the store
takes such an error, raised through that layer (``from_redis_py``), as the dropped
connection or the failure to connect it is. An error raised elsewhere in redis-py, a
reply's callback for one, left the connection as it was: it is raised as it is.

An error is told by its class and its message (``described``), never its repr:
redis-py's errors have a repr without their message (``network:ConnectionError``),
which loses the host, the port and the reason an operator needs.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis

from .cancellation import keeping_cancellations

T = TypeVar("T")

CONNECTION_LAYER: Final = "redis.asyncio.connection"  # see ``from_redis_py``

# The commands the store reads with (see ``read``): none writes, so any may be sent
# again. A command that writes, or a script, is not one of them.
READ_COMMANDS: Final = frozenset(
    {
        "CONFIG GET",
        "GET",
        "HELLO",
        "HGET",
        "HGETALL",
        "HMGET",
        "HSCAN",
        "INFO",
        "TIME",
        "TYPE",
        "XRANGE",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZSCAN",
    }
)


class NoConnection(redis.exceptions.ConnectionError):
    """The pool had no connection to hand out: none free within its wait, or none
    could be made (Redis away, or its run's check failed). No connection dropped: a
    call that failed so is not made again, and marks nothing stale."""


class CheckedPool(BlockingConnectionPool):
    """A pool whose every connection, once made (first, or again after it dropped),
    goes through ``on_connect`` before it carries a call. A restart of Redis drops
    every connection, so this is where an instance meets a restarted Redis first: the
    store checks its generation there (generation.py), before anything is read or
    written on that run of Redis. Connections are numbered as they are made; those
    made before a call whose connection dropped (``dropped``) are made again before
    their next call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Else a cancellation that meets a send's end is dropped (cancellation.py).
        self.connection_class = keeping_cancellations(self.connection_class)
        self.on_connect: Callable[[Any], Awaitable[None]] | None = None
        self.made = 0  # connections made so far, first or again
        self._stale_up_to = 0  # the last connection made that is stale, by its number
        self._numbers: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def make_connection(self) -> Any:
        connection = super().make_connection()
        connection.register_connect_callback(self._connected)  # kept as a weak method
        return connection

    def dropped(self, made: int) -> None:
        """A call begun when ``made`` connections had been made lost its connection:
        Redis closed them all, so each of those is made again before its next call."""
        self._stale_up_to = max(self._stale_up_to, made)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            connection = await super().get_connection(*args, **kwargs)
            number = self._numbers.get(connection)
            if number is not None and number <= self._stale_up_to:
                await self._make_again(connection)
            return connection
        except redis.exceptions.ConnectionError as exc:
            if type(exc) is not redis.exceptions.ConnectionError:
                raise  # Redis's answer (LOADING, a refused login): as it is
            raise NoConnection(*exc.args) from exc
        except Exception as exc:
            if not from_redis_py(exc):
                raise
            raise NoConnection(f"connecting failed: {described(exc)}") from exc

    async def _make_again(self, connection: Any) -> None:
        try:
            await connection.disconnect()
            await connection.connect()
        except BaseException:
            await self.release(connection)
            raise

    async def _connected(self, connection: Any) -> None:
        self.made += 1
        self._numbers[connection] = self.made
        if self.on_connect is not None:
            await self.on_connect(connection)


async def attempt(client: Redis, call: Callable[[], Awaitable[T]], *, only_reads: bool) -> T:
    """``call()``, which sends one or more commands on ``client``; made once more if
    its connection dropped and it ``only_reads``. A drop marks every connection made
    before the call began stale (``CheckedPool.dropped``), whatever the call."""
    pool = client.connection_pool
    made = pool.made if isinstance(pool, CheckedPool) else 0
    try:
        return await call()
    except Exception as exc:
        dropped = as_dropped(exc)
        if dropped is None:
            raise  # no connection to be had (NoConnection), Redis's answer, or ours
        if isinstance(pool, CheckedPool):
            pool.dropped(made)
        if not only_reads:
            if dropped is exc:
                raise
            raise dropped from exc
    return await call()


def as_dropped(exc: Exception) -> redis.exceptions.ConnectionError | None:
    """The dropped connection ``exc`` tells of, else None: a plain ConnectionError
    (not NoConnection, nor Redis's answer such as LOADING), or a failure from inside
    redis-py's connection layer that is no RedisError (see the module docstring)."""
    if type(exc) is redis.exceptions.ConnectionError:
        return exc
    if from_redis_py(exc):
        return redis.exceptions.ConnectionError(f"connection lost: {described(exc)}")
    return None


def address(client: Redis) -> str:
    """Where ``client`` connects: a host and a port, or a Unix socket's path."""
    options = client.connection_pool.connection_kwargs
    return str(options.get("path") or f"{options.get('host')}:{options.get('port')}")


def described(exc: BaseException) -> str:
    """``exc`` as an operator reads it: its class and its message, as in
    ``ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused.``
    (the class alone when it has none)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def from_redis_py(exc: BaseException) -> bool:
    """Whether ``exc``, no RedisError, was raised inside redis-py's connection layer
    (``redis.asyncio.connection``, which drops its connection on any error): of the
    frames in its traceback that are redis-py's or this package's, one of that layer's
    lies below the deepest of this package's (the frames below it are the event loop's
    transport, or redis-py's parser). A failure of this package's own code is not, a
    callback that redis-py runs (``on_connect``) included; nor is one of redis-py's
    outside that layer (a reply's callback: the connection is as it was)."""
    if isinstance(exc, redis.exceptions.RedisError):
        return False
    through_connection = False
    frame = exc.__traceback__
    while frame is not None:
        module = frame.tb_frame.f_globals.get("__name__", "")
        if module.startswith("bamboo_session."):
            through_connection = False
        elif module == CONNECTION_LAYER:
            through_connection = True
        frame = frame.tb_next
    return through_connection


async def read(client: Redis, *command: Any) -> Any:
    """A command of ``READ_COMMANDS``, made once more on a fresh connection if its
    connection dropped; Redis's errors as redis-py raises them."""
    if command[0] not in READ_COMMANDS:
        raise ValueError(f"{command[0]!r} is not a command the store reads with")
    return await attempt(client, lambda: client.execute_command(*command), only_reads=True)
