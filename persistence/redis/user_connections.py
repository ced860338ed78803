"""Connections per user across instances on a Redis store (the optional
``UserConnectionStore`` of persistence/user_connections.py): each user's connections
in a sorted set ``<prefix>:{u:<user>}:conns`` scored by heartbeat deadline, changed by
``user_conns.lua``, which sweeps out dead instances' members and refuses an acquire
past the cap in the same step. The heartbeat refreshes every user's members in one
pipelined round trip, one script call per user. A release marks its members gone for
twice the heartbeat (``<prefix>:{u:<user>}:gone``), so that an acquire or refresh given
up on here but run by Redis after the release does not count them again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .storage import RedisStorage

REFUSED: Final = -1  # user_conns.lua's answer to an acquire past the cap


class RedisUserConnections:
    """One store instance's side of the per-user counts (``storage.user_connections``)."""

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage

    @property
    def heartbeat(self) -> float:
        return self._storage.config.heartbeat

    async def acquire(self, user: str, connection_id: str, limit: int) -> bool:
        keys, args = self._call(user, "acquire", [connection_id], limit)
        count: int = await self._storage.redis.run("user_conns", keys, args)
        return count != REFUSED

    async def release(self, user: str, connection_ids: Sequence[str]) -> None:
        if connection_ids:
            keys, args = self._call(user, "release", connection_ids)
            await self._storage.redis.run("user_conns", keys, args)

    async def refresh(self, held: Mapping[str, Sequence[str]]) -> None:
        calls = [self._call(user, "refresh", ids) for user, ids in held.items() if ids]
        await self._storage.redis.run_many("user_conns", calls)

    def _call(
        self, user: str, mode: str, connection_ids: Sequence[str], limit: int = 0
    ) -> tuple[list[str], list[str | int]]:
        instance = self._storage.instance
        args: list[str | int] = [
            mode,
            round(self.heartbeat * 1000),
            max(0, limit),
            *(f"{instance}:{connection_id}" for connection_id in connection_ids),
        ]
        layout = self._storage.layout
        return [layout.user_conns(user), layout.user_conns_gone(user)], args
