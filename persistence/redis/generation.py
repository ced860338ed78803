"""The generation of a Redis store's history: what changes every session's epoch at
once when a Redis that may lose writes it acknowledged (``accept_lossy=true``)
restarts, since such a restart may have cut any session's log short, and its next
events would otherwise take the lost events' seqs under the same epoch.

The record ``<prefix>:{idx}:generation`` (a hash: ``run``, ``token``, ``lossy``) holds
the ``run_id`` of the Redis run it was checked against and a token. The epoch served
for a session is its stored epoch, then ``.`` and the token when there is one
(``served``); the scripts that hand out events or take appends compare a caller's
epoch with that (common.lua ``served_epoch``). ``generation.lua`` compares the record
with the current run: on another run of a lossy Redis, or no record on a lossy Redis
that holds sessions (the record itself lost), it sets a fresh random token, once
however many instances look (a compare-and-set). A random token, not a counter: a
counter lost with the record would start again and serve an epoch already served
over another history.

Who looks: the store's open; the listener, before it catches its sessions up after
its connection came back (a restart of Redis drops every connection); any call that
finds Redis's script cache empty, before it loads a script again (so no script runs
on a restarted Redis before the record is settled); and the presence heartbeat,
every ``heartbeat / 3`` while this instance holds connections, on a lossy Redis;
and any call answered on a connection the client made (or made again) since the last
check (``settle``, client.py ``CountingPool``), before its answer is served: the
first answers of a restarted Redis come on new connections. A check of the run
already checked costs one ``INFO server``; a new run, the script.
An instance that finds the token changed ends every subscription (its viewers are
closed with 1012, resume, and are told ``resumed: false``), and its actors, parked
ones included, retire at their next attach, whose epoch no longer matches the
store's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Final

import redis.exceptions

from ..feed import HISTORY_LOST
from .scripts import run, unreachable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..feed import Feed
    from .layout import Layout

log = logging.getLogger(__name__)

SEPARATOR: Final = "."  # in no epoch the store makes (secrets.token_urlsafe)
# What a served epoch of another generation is given to a script as: no stored epoch
# is this, so the session reads as another log's (NOTFOUND).
OTHER_GENERATION: Final = "\x00"


class Generation:
    """This instance's view of the store's generation, and its checks of it."""

    def __init__(self, client: Redis, layout: Layout, feed: Feed, read_only: bool) -> None:
        self._client = client
        self.key = layout.index + "generation"
        self._index = layout.index
        self._feed = feed
        self._read_only = read_only
        self.lossy = True  # until the open's check of Redis's settings says otherwise
        self.token = ""
        self.changes = 0  # tokens this instance adopted (its open's included)
        self._run = ""  # the run of Redis last checked: the same run needs no script
        # Connections the client's pool had made at the last check (client.py
        # CountingPool): one made since may be to another run of Redis.
        self._connects = -1
        self._checking = asyncio.Lock()

    def served(self, stored: str) -> str:
        """The epoch clients see for a session stored with ``stored``."""
        return stored + SEPARATOR + self.token if self.token else stored

    def stored(self, served: str | None) -> str | None:
        """The stored epoch of ``served`` for the scripts that compare stored epochs;
        :data:`OTHER_GENERATION` if it was served under another generation."""
        if not served or not self.token:
            return served
        head, separator, token = served.rpartition(SEPARATOR)
        return head if separator and token == self.token else OTHER_GENERATION

    async def check(self, *, refused: bool = False) -> bool:
        """Compares the record with the Redis now running, and adopts its token:
        True if the token changed (every subscription is then ended). ``refused``: a
        script refused an epoch this instance served (HistoryLost), so the record
        disagrees with it even on the run already checked (the record lost while
        Redis ran on: a DEL, an eviction), and is compared again."""
        async with self._checking:
            return await self._check_locked(refused)

    async def _check_locked(self, refused: bool) -> bool:
        connects = self._pool_connects()  # before INFO, which may connect anew
        changed = await self._compare(refused)
        self._connects = connects  # only once compared: a failed check is owed
        return changed

    async def _compare(self, refused: bool) -> bool:
        run_id = await self._run_id()
        if run_id is None or (run_id == self._run and not refused):
            return False
        if self._read_only:  # writes nothing: serves what the record says, read anew
            found = await self._call("HGET", self.key, "token")  # at each look
            return self._adopt(found.decode() if isinstance(found, bytes) else "")
        fresh = secrets.token_urlsafe(6)
        args = [run_id, "1" if self.lossy else "0", fresh, self._index]
        token, changed_here = await run(self._client, "generation", [self.key], args)
        self._run = run_id
        if changed_here:
            log.warning(
                "Redis restarted and may have lost writes it acknowledged: every "
                "session's epoch changed; clients resume with resumed: false"
            )
        return self._adopt(token.decode() if isinstance(token, bytes) else str(token))

    async def settle(self) -> None:
        """Checks the generation if the client made a connection since the last check
        (a restart of Redis drops them all): what was just read may be of a run of
        Redis this instance has not compared the record with yet. Costs nothing else."""
        if self._pool_connects() == self._connects:
            return
        async with self._checking:
            # Calls that waited here for one check are settled by it: a burst that
            # fills the pool costs about one INFO per connection, not one per call.
            if self._pool_connects() != self._connects:
                await self._check_locked(False)

    def _pool_connects(self) -> int:
        connects = getattr(self._client.connection_pool, "connects", 0)
        return connects if isinstance(connects, int) else 0

    def _adopt(self, token: str) -> bool:
        if token == self.token:
            return False
        self.token = token
        self.changes += 1
        self._feed.end_all(HISTORY_LOST)
        return True

    async def _run_id(self) -> str | None:
        try:
            info = await self._client.execute_command("INFO", "server")
        except redis.exceptions.ResponseError:
            return None  # INFO refused (an ACL): no run to compare, no change seen
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc
        run_id = info.get("run_id") if isinstance(info, dict) else None
        if isinstance(run_id, bytes):
            run_id = run_id.decode()
        return run_id if isinstance(run_id, str) else None

    async def _call(self, *command: str) -> object:
        try:
            return await self._client.execute_command(*command)
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc
