"""The generation of a Redis store's history: what changes every session's epoch at
once when a Redis that may lose writes it acknowledged (``accept_lossy=true``)
restarts, since such a restart may have cut any session's log short, and its next
events would otherwise take the lost events' seqs under the same epoch.

The record ``<prefix>:{idx}:generation`` (a hash: ``run``, ``token``, ``lossy``) holds
the ``run_id`` of the Redis run it was checked against and a token. The epoch served
for a session is its stored epoch, then ``.`` and the token when there is one
(``served``), unless the session was created under that very token: a session's
epoch is stored with the token of its creation (``k3J9…~Qx7-aB3c``, create.lua), and
served as it was given until the token changes, since its whole history is of that
generation (so a session migrated in keeps the epoch its source served). The
scripts that hand out events or take appends compare a caller's epoch with that
(common.lua ``served_epoch``). ``generation.lua`` compares the record
with the current run: on another run of a lossy Redis, or no record on a Redis that
holds sessions (the record itself lost, or deleted by hand) when that Redis is lossy
or the record was ever needed (``generation:marked``: it held a token or a lossy
mark), it sets a fresh random token, once however many instances look (a
compare-and-set). A store 0.1.0 wrote has neither key: a durable one keeps its
epochs at the first open of this version. A record found missing
by an instance that checked this very run (a DEL while Redis ran on: the scripts
then serve stored epochs that no longer match, and refuse its calls) is put back
with the token it holds, marked lossy: nothing was lost, and the epochs stay. A
random token, not a counter: a counter lost with the record would start again and
serve an epoch already served over another history.

Who looks: the store's open; the listener, before it catches its sessions up after
its connection came back (a restart of Redis drops every connection); any call that
finds Redis's script cache empty, before it loads a script again (so no script runs
on a restarted Redis before the record is settled); and the presence heartbeat,
every ``heartbeat / 3`` while this instance holds connections, on a lossy Redis;
and every connection the client makes, or makes again, before it carries a call
(``on_connect``, pool.py ``CheckedPool``): a restart drops every connection, so an
instance meets a restarted Redis there first, whether or not its script cache came
back (Redis before 7.0 keeps the scripts in an RDB saved with replication
information, and then no NOSCRIPT tells). A check of the run already checked costs
one ``INFO server``; a new run, the script. The record is marked lossy, for the
run, also when a Redis checked durable turns lossy later (durability.py
``DurabilityWatch``, through ``record_lossy``): its next restart then changes the
token, as a restart of a run recorded lossy does.
An instance that finds the token changed ends every subscription (its viewers are
closed with 1012, resume, and are told ``resumed: false``), and its actors, parked
ones included, retire at their next attach, whose epoch no longer matches the
store's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any, Final

import redis.exceptions

from ..feed import HISTORY_LOST
from .pool import described, read
from .scripts import SCRIPTS, run, unreachable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..feed import Feed
    from .layout import Layout

log = logging.getLogger(__name__)

SEPARATOR: Final = "."  # in no epoch the store makes (secrets.token_urlsafe)
CREATED_UNDER: Final = "~"  # between a stored epoch and the token it was created under


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
        # False once Redis refused INFO (an ACL): no run to compare, so a restart of
        # Redis goes unseen and changes no epoch (storage.py refuses a writable store
        # on a lossy Redis then; durability.py warns if Redis turns lossy later).
        self.sees_restarts = True
        self._checking = asyncio.Lock()

    def served(self, stored: str) -> str:
        """The epoch clients see for a session stored with ``stored``."""
        epoch, created_under = split_stored(stored)
        if not self.token or self.token == created_under:
            return epoch
        return epoch + SEPARATOR + self.token

    async def check(self, *, refused: bool = False) -> bool:
        """Compares the record with the Redis now running, and adopts its token:
        True if the token changed (every subscription is then ended). ``refused``: a
        script refused an epoch this instance served (HistoryLost), so the record
        disagrees with it even on the run already checked (the record lost while
        Redis ran on: a DEL, an eviction), and is compared again. Where Redis refuses
        INFO (an ACL) there is no run to compare: the record's token is adopted as it
        stands, at every check."""
        async with self._checking:
            run_id = await self._run_id()
            if run_id is None:  # INFO refused (an ACL): no run, but the token stands
                return self._adopt(await self._call("HGET", self.key, "token"))
            if run_id == self._run and not refused:
                return False
            if self._read_only:  # writes nothing: serves what the record says, read anew
                return self._adopt(await self._call("HGET", self.key, "token"))  # each look
            reply = await run(self._client, "generation", [self.key], self._args(run_id))
            return self._settle(run_id, reply)

    async def record_lossy(self) -> bool:
        """Redis, checked durable so far, may now lose writes it acknowledged (a
        ``CONFIG SET`` since: durability.py): the record says so for the run now, so
        that its next restart changes every epoch, as a restart of a run recorded lossy
        does. On another run than the one last checked, that run is checked as
        ``check`` would, now taken as lossy. True if the token changed. This instance
        takes Redis for lossy from the call on, also when the record could not be
        written (the call then raises): its first check of the next run changes the
        token all the same."""
        async with self._checking:
            self.lossy = True  # in the script's arguments, and every check's after
            run_id = None if self._read_only else await self._run_id()
            if run_id is None:
                return False  # read-only, or INFO refused: no record to write
            reply = await run(self._client, "generation", [self.key], self._args(run_id))
            return self._settle(run_id, reply)

    async def on_connect(self, connection: Any) -> None:
        """A connection just made (pool.py CheckedPool), before it carries a call:
        the run of Redis it reaches is compared with the one last checked, and on
        another run the record too, on this connection (not the pool's: its calls may
        be the ones waiting for this connection). Without the lock ``check`` holds,
        which may be waiting for this very connection: the script is a
        compare-and-set, and adopting a token twice changes nothing."""
        try:
            await connection.send_command("INFO", "server")
            try:
                run_id = _run_in(await connection.read_response())
            except redis.exceptions.ResponseError:
                self.sees_restarts = False  # INFO refused (an ACL): nothing to compare
                return
            if run_id is None or run_id == self._run:
                return
            if self._read_only:
                await connection.send_command("HGET", self.key, "token")
                self._adopt(await connection.read_response())
                return
            script = SCRIPTS["generation"]
            await connection.send_command("EVAL", script.source, 1, self.key, *self._args(run_id))
            self._settle(run_id, await connection.read_response())
        except Exception as exc:
            # Left connected, it would carry calls unchecked: dropped, it is checked
            # when made again. redis-py awaits this inside its connect, so the call
            # fails as Redis's (retryable), never with a traceback of another kind.
            await connection.disconnect()
            if isinstance(exc, redis.exceptions.RedisError):
                raise
            what = described(exc)
            raise redis.exceptions.ConnectionError(f"checking redis's run: {what}") from exc

    def _args(self, run_id: str) -> list[str]:
        lossy = "1" if self.lossy else "0"
        fresh = secrets.token_urlsafe(6)
        return [run_id, lossy, fresh, self._index, self._run, self.token]

    def _settle(self, run_id: str, reply: Any) -> bool:
        """generation.lua's reply ``{token, changed here, put back}`` for ``run_id``:
        adopted."""
        token, changed_here, put_back = reply
        self._run = run_id
        if changed_here:
            log.warning(
                "Redis restarted and may have lost writes it acknowledged, or the "
                "store's generation record %s was missing: every session's epoch "
                "changed; clients resume with resumed: false",
                self.key,
            )
        if put_back:
            log.warning(
                "the store's generation record %s was missing while Redis ran on (deleted "
                "by hand, or evicted): put back with the token this instance served, "
                "marked lossy, so that the next restart of Redis changes every "
                "session's epoch",
                self.key,
            )
        return self._adopt(token)

    def _adopt(self, found: object) -> bool:
        token = found.decode() if isinstance(found, bytes) else "" if found is None else str(found)
        if token == self.token:
            return False
        self.token = token
        self.changes += 1
        self._feed.end_all(HISTORY_LOST)
        return True

    async def _run_id(self) -> str | None:
        try:
            info = await read(self._client, "INFO", "server")
        except redis.exceptions.ResponseError:
            self.sees_restarts = False  # INFO refused (an ACL): no run to compare
            return None
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc
        run_id = info.get("run_id") if isinstance(info, dict) else None
        if isinstance(run_id, bytes):
            run_id = run_id.decode()
        return run_id if isinstance(run_id, str) else None

    async def _call(self, *command: str) -> object:
        try:
            return await read(self._client, *command)
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc


def split_stored(stored: str) -> tuple[str, str | None]:
    """A stored epoch's epoch, and the token it was created under (None if none)."""
    epoch, mark, token = stored.rpartition(CREATED_UNDER)
    return (epoch, token) if mark else (stored, None)


def _run_in(info: object) -> str | None:
    """The ``run_id`` in ``INFO server``'s text, as a bare connection reads it."""
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "run_id" and value.strip():
            return value.strip()
    return None
