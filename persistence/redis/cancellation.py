"""Connections that keep a cancellation redis-py's send would drop: the connection
class of every pool the Redis store makes (pool.py ``CheckedPool``), its own client's
and its pub/sub listener's.

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives as the awaitable
it waits for completes (CPython gh-86296, fixed in 3.12): it returns that awaitable's
result, or raises its error. redis-py sends every command through ``wait_for`` when
``socket_timeout`` is set, as the store's clients have it (client.py). A task
cancelled in that instant went on as if nothing had been asked of it: a watch of a
session (``RedisStorage.subscribe``) subscribed, read the session and then waited for
its events, for ever; a loop of reads went on looping (bamboo_session/tasks.py).

The task still counts the dropped cancellation (``Task.cancelling``), and nothing in a
send takes one back: ``asyncio.timeout`` takes back only those of its own deadline,
which a send does not set. So a send after which the count is higher than before it
was cancelled on its way, and raises CancelledError, as a cancellation a turn of the
loop sooner would have. Its connection is dropped first, as redis-py drops one whose
send was cut short: the command's reply would come on it unread, for the next command
to take as its own. A deadline (``asyncio.timeout``) whose cancellation the send
dropped is kept so too: it sees its CancelledError, and raises its TimeoutError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection

_MADE: dict[type[AbstractConnection], type[AbstractConnection]] = {}


class _KeepsCancellations(AbstractConnection):
    """What a pool's connection class gets before its own (see module docstring)."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        task = asyncio.current_task()
        if task is None:  # no task to cancel: a close run outside one
            return await super().send_packed_command(command, check_health)
        asked = task.cancelling()
        try:
            await super().send_packed_command(command, check_health)
        except Exception as exc:  # redis-py dropped the connection on its error
            if task.cancelling() > asked:
                raise asyncio.CancelledError from exc
            raise
        if task.cancelling() > asked:
            try:
                await self.disconnect(nowait=True)
            finally:
                raise asyncio.CancelledError


def keeping_cancellations(connection_class: type[Any]) -> type[AbstractConnection]:
    """``connection_class`` (redis-py's, the one a URL's scheme calls for: TCP, TLS or a
    Unix socket), made to keep the cancellations its sends would drop."""
    if issubclass(connection_class, _KeepsCancellations):
        return connection_class
    made = _MADE.get(connection_class)
    if made is None:
        name = f"CancellationKeeping{connection_class.__name__}"
        made = type(name, (_KeepsCancellations, connection_class), {})
        _MADE[connection_class] = made
    return made
