"""Presence across instances on a Redis store (the optional ``PresenceStore`` of
persistence/presence.py): each session's connections in a sorted set
``<prefix>:{<id>}:conns`` scored by heartbeat deadline, changed by ``presence.lua``,
which also sweeps out dead instances' connections and publishes every join and leave
on the session's channel. The store's listener hands the notices back here. The
sessions of instances that died are parked by the survivors' heartbeats
(orphans.py), and the states a process owes by it (server/owed_parks.py), each by
``park_many``, many sessions to one call; ``hold`` records the sessions a process owes
as its own again at its heartbeat (orphans.lua), for a survivor to park. A call
given an epoch is checked against the session's ``epoch`` field in the same script
(its reply -1: another epoch, nothing done)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import redis.exceptions

from bamboo_session.protocol.ids import check_session_id, is_valid_session_id
from bamboo_session.protocol.models import SessionState

from ..base import SessionNotFound, StorageError
from ..presence import Held, Park, Parked, PresenceNotice
from .orphans import sweep_dead_instances
from .scripts import HistoryLost, translate

if TYPE_CHECKING:
    from .storage import RedisStorage


class _Wire(msgspec.Struct):
    s: str  # session
    c: str  # connection
    r: str  # role
    j: bool  # joined
    n: int  # count after
    i: str  # instance
    x: bool = False  # expired


_decoder = msgspec.json.Decoder(_Wire)
OTHER_EPOCH: Final = -1  # presence.lua's reply for a session of another epoch
EARLIER_GENERATION: Final = -2  # its reply for this session as an earlier generation served it
FAILED_ALONE: Final = -3  # a park's, for a session whose own keys failed it (another type)
PARKED: Final = SessionState.DISCONNECTED.value


# Entries one 'hold' records (orphans.lua): some 4,000 a millisecond of Redis's time.
HELD_AT_ONCE: Final = 4096


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parked(session_id: str, answer: list[Any]) -> Parked | StorageError:
    """A park's three values in presence.lua's reply as its outcome."""
    count, wrote, state = answer
    if int(count) == OTHER_EPOCH:
        return SessionNotFound(f"session {session_id!r} not found")
    if int(count) == FAILED_ALONE:
        error = translate(redis.exceptions.ResponseError(_text(state)))
        return error if isinstance(error, StorageError) else StorageError(str(error))
    return Parked(int(count), int(wrote) == 1, _text(state))


class RedisPresence:
    """Session-wide connection counts for one store instance (``storage.presence``)."""

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._instance = storage.instance
        self._callback: Callable[[PresenceNotice], object] | None = None
        storage.live.listener.on_presence = self._deliver

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def heartbeat(self) -> float:
        return self._storage.config.heartbeat

    async def join(
        self, session_id: str, connection_id: str, role: str, *, epoch: str | None = None
    ) -> int:
        return await self._run(session_id, "join", [(connection_id, role)], epoch)

    async def leave(
        self, session_id: str, connection_id: str, role: str, *, epoch: str | None = None
    ) -> int:
        return await self._run(session_id, "leave", [(connection_id, role)], epoch)

    async def leave_all(
        self,
        session_id: str,
        connections: Sequence[tuple[str, str]],
        *,
        epoch: str | None = None,
    ) -> int:
        return await self._run(session_id, "leave", connections, epoch)

    async def refresh(self, held: Sequence[Held]) -> list[str]:
        # A session of another epoch answers -1 (of an earlier generation, -2) and is
        # left as it is: its holder hears of the change by the session's notice, or at
        # its next look. Else the script answers the count, how many it registered
        # again and the stored state: only a parked session is named, so that a refresh
        # after an outage, which registers every session's connections again, costs
        # its actors no reads.
        generation = self._storage.generation
        if generation.lossy:  # a restart the listener's reconnect did not tell of yet
            await generation.check()
        calls = [self._call(h.session_id, "refresh", h.connections, h.epoch) for h in held]
        answers = await self._storage.redis.run_many("presence", calls)
        return [
            h.session_id
            for h, answer in zip(held, answers, strict=True)
            if isinstance(answer, list) and int(answer[1]) > 0 and _text(answer[2]) == PARKED
        ]

    async def count(self, session_id: str) -> int:
        return await self._run(session_id, "refresh", [])  # sweeps the dead, then counts

    async def counts(self, session_ids: Sequence[str]) -> list[int]:
        calls = [self._call(session_id, "refresh", []) for session_id in session_ids]
        return [int(count) for count in await self._storage.redis.run_many("presence", calls)]

    async def sweep_dead(self) -> int:
        return await sweep_dead_instances(self._storage)

    async def park_many(self, parks: Sequence[Park]) -> list[Parked | StorageError]:
        # One script call for them all: a call each cost this process a command to
        # pack and a reply to read per session (bench/RESULTS.md).
        if not parks:
            return []
        answer = await self._storage.redis.run("presence", *self._park_call(parks))
        return [_parked(p.session_id, answer[3 * i : 3 * i + 3]) for i, p in enumerate(parks)]

    async def hold(self, sessions: Sequence[tuple[str, str | None]]) -> None:
        storage = self._storage
        keys = [storage.layout.instance_sessions(self._instance), storage.layout.instances()]
        head: list[str | int] = ["hold", round(self.heartbeat * 1000), self._instance]
        entries = [f"{check_session_id(sid)} {epoch or ''}" for sid, epoch in sessions]
        calls = [
            (keys, [*head, *entries[at : at + HELD_AT_ONCE]])
            for at in range(0, len(entries), HELD_AT_ONCE)
        ]
        await storage.redis.run_many("orphans", calls)

    @staticmethod
    def orphan_park(entry: str) -> Park | None:
        """The park of one session a dead instance was in, its entry ``<id> <epoch>``
        as presence.lua recorded it; None for one that names no session id."""
        session_id, _, epoch = entry.partition(" ")
        return Park(session_id, epoch) if is_valid_session_id(session_id) else None

    def _park_call(self, parks: Sequence[Park]) -> tuple[list[str], list[str | int]]:
        """presence.lua's call in mode ``park`` of each session of ``parks``."""
        storage = self._storage
        layout = storage.layout
        keys: list[str] = []
        args: list[str | int] = ["", self._instance, round(self.heartbeat * 1000)]
        args += [storage.redis.publish_command, "", "park", "", storage.generation.key]
        args.append(layout.index)
        for park in parks:
            session_id = check_session_id(park.session_id)
            keys += (layout.conns(session_id), layout.meta(session_id), layout.gone(session_id))
            args += (session_id, layout.channel(session_id), park.epoch or "", len(park.leaving))
            args += (f"{role}|{connection_id}" for connection_id, role in park.leaving)
        return keys, args

    def on_presence(self, callback: Callable[[PresenceNotice], object] | None) -> None:
        self._callback = callback

    async def _run(
        self,
        session_id: str,
        mode: str,
        connections: Sequence[tuple[str, str]],
        epoch: str | None = None,
    ) -> int:
        keys, args = self._call(session_id, mode, connections, epoch)
        count: int = await self._storage.redis.run("presence", keys, args)
        if count == EARLIER_GENERATION:  # the same session: not gone
            raise HistoryLost("redis restarted and may have lost writes: epoch changed")
        if count == OTHER_EPOCH:
            raise SessionNotFound(f"session {session_id!r} not found")
        return count

    def _call(
        self,
        session_id: str,
        mode: str,
        connections: Sequence[tuple[str, str]],
        epoch: str | None = None,
    ) -> tuple[list[str], list[str | int]]:
        storage = self._storage
        layout = storage.layout
        session_id = check_session_id(session_id)
        args: list[str | int] = [
            session_id,
            self._instance,
            round(self.heartbeat * 1000),
            storage.redis.publish_command,  # notices need no WAIT: nothing durable
            layout.channel(session_id),
            mode,
            epoch or "",  # as served: checked against the session's, generation too
            storage.generation.key,
            *(f"{role}|{connection_id}" for connection_id, role in connections),
        ]
        keys = [layout.conns(session_id), layout.meta(session_id), layout.gone(session_id)]
        return [*keys, layout.instance_sessions(self._instance), layout.instances()], args

    def _deliver(self, session_id: str, data: bytes) -> None:
        if self._callback is None:
            return
        wire = _decoder.decode(data)
        self._callback(PresenceNotice(session_id, wire.c, wire.r, wire.j, wire.n, wire.i, wire.x))
