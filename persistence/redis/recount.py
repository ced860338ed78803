"""``bamboo-session recount`` on a Redis store (persistence/recount.py): each session's
``bytes`` counted again from its stream by ``recount.lua``, each user's sum in
``userbytes`` rebuilt from its sessions by ``recount_user.lua``.

Safe beside live servers: a session's count is set by the script call that reads its
log's end, atomically with that read, and moves its user's sum by the same amount (an
append before it is counted, one after it adds to the new count). The entries are
summed a page per call, the page sized from the entries seen so that a call reads
about ``PAGE_BYTES``: a long log never holds Redis in one script, nor brings itself
into a script's memory whole. A user's sum is rebuilt from its sessions' counts
``USER_STEP`` sessions per call, the scripts that move counts meanwhile following
the rebuild (recount_user.lua says why the sum it sets is exact): a user of 100,000
sessions held Redis for 240 ms to 1 s in one script.

A dry run writes nothing, and may run on a store opened read-only: recount.lua sums a
session's log as for a run and returns what it would set; a user's sums are read in
pages of plain commands (not one moment of the store, which a report needs not be).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from bamboo_session.protocol.ids import check_session_id

from ..base import StorageError
from ..recount import SessionRecount, UserRebuild

if TYPE_CHECKING:
    from .storage import RedisStorage

PAGE_BYTES: Final = 256 * 1024  # of entries read by one call, roughly
FIRST_PAGE: Final = 64  # entries read by a session's first call
MAX_PAGE: Final = 512  # entries: some 5 ms of Redis per call
SCAN_COUNT: Final = 1000  # ids asked of ZSCAN and HSCAN per call
USER_STEP: Final = 1000  # sessions a recount_user.lua call reads: 5 to 7 ms of Redis
# A rebuild's state outlives its last call by this much (ms): one whose caller went
# away stops costing the scripts that follow it, and holding its user, within it.
USER_STEP_TTL_MS: Final = 10_000
# Rebuilds of one user begun again (their state expired: the caller stalled) before
# the recount gives up.
USER_ATTEMPTS: Final = 5
BUSY_WAIT: Final = 0.05  # s between first calls while another rebuild holds the user


class RedisRecounter:
    """The recount of one store (persistence/recount.py ``BytesRecounter``)."""

    def __init__(
        self,
        storage: RedisStorage,
        first_page: int = FIRST_PAGE,
        *,
        dry_run: bool = False,
        user_step: int = USER_STEP,
    ) -> None:
        if not dry_run:
            storage.require_writable()
        self.storage = storage
        self.first_page = first_page
        self.dry_run = dry_run
        self.user_step = user_step
        self.calls = 0  # recount.lua calls made (tests: the recount went in steps)
        self.user_calls = 0  # recount_user.lua calls made

    async def session_pages(self) -> AsyncIterator[list[str]]:
        # ZSCAN, not pages of list_sessions: a session removed meanwhile would shift
        # the offsets of the next pages past one that is still there.
        async for page in self._scan("ZSCAN", self.storage.layout.index + "created"):
            yield page

    async def counted_users(self) -> AsyncIterator[list[str]]:
        async for page in self._scan("HSCAN", self.storage.layout.index + "userbytes"):
            yield page

    async def recount_session(self, session_id: str) -> SessionRecount | None:
        storage = self.storage
        session_id = check_session_id(session_id)
        meta = storage.layout.meta(session_id)
        epoch = await storage.redis.read("HGET", meta, "epoch")
        if epoch is None:
            return None
        keys = [meta, storage.layout.log(session_id)]
        start, summed, page = 1, 0, self.first_page
        while True:
            args = [storage.layout.index, epoch, str(start), str(summed), page]
            if self.dry_run:
                reply = await storage.redis.run("recount", keys, [*args, "dry"])
            else:
                reply = await storage.redis.write("recount", keys, [*args, ""])
            self.calls += 1
            if reply[0] == 0:
                return None  # gone, or replaced by a session of another epoch
            if reply[0] == 2:
                before, after, user = reply[1], int(reply[2]), reply[3]
                return SessionRecount(
                    session_id,
                    user.decode() if user else None,
                    int(before) if before else None,
                    after,
                )
            read = int(reply[2]) - summed
            start, summed = int(reply[1]), int(reply[2])
            page = min(MAX_PAGE, max(1, PAGE_BYTES * page // max(read, 1)))

    async def rebuild_user(self, user_id: str) -> UserRebuild:
        if self.dry_run:
            return await self._user_as_held(user_id)
        layout, redis = self.storage.layout, self.storage.redis
        loop = asyncio.get_running_loop()
        # Another rebuild of the user ends by its state's expiry at the latest.
        busy_until = loop.time() + 2 * USER_STEP_TTL_MS / 1000
        for _ in range(USER_ATTEMPTS):
            token, begin = secrets.token_hex(8), "begin"
            while True:
                args = [layout.index, f"{layout.prefix}:", user_id, token, begin]
                args += [str(self.user_step), str(USER_STEP_TTL_MS)]
                reply = await redis.write("recount_user", [], args)
                self.user_calls += 1
                if reply[0] == 3 and loop.time() < busy_until:
                    await asyncio.sleep(BUSY_WAIT)  # another rebuild of the user: wait
                    continue
                if reply[0] == 2:
                    before, after = reply[1], int(reply[2])
                    return UserRebuild(user_id, int(before) if before else None, after)
                if reply[0] != 1:
                    break  # its state expired (its calls stalled), or the wait ran out
                begin = ""
        raise StorageError(
            f"the sum of user {user_id!r} was not rebuilt: another rebuild of it held it "
            f"past {2 * USER_STEP_TTL_MS // 1000} s, or its calls stalled past their "
            f"state's expiry {USER_ATTEMPTS} times"
        )

    async def _user_as_held(self, user_id: str) -> UserRebuild:
        """The user's sum and the sum of its sessions' counts, as the store holds them
        (a dry run's rebuild), a page of sessions at a time."""
        layout, redis = self.storage.layout, self.storage.redis
        held = await redis.read("HGET", layout.index + "userbytes", user_id)
        index, total, start = layout.index + f"user:{user_id}", 0, 0
        while ids := await redis.read("ZRANGE", index, start, start + self.user_step - 1):
            metas = [("HMGET", layout.meta(i.decode()), "user", "bytes") for i in ids]
            for user, count in await redis.read_many(metas):
                if user is not None and user.decode() == user_id:
                    total += int(count or 0)
            start += len(ids)
        return UserRebuild(user_id, int(held) if held else None, total)

    async def _scan(self, command: str, key: str) -> AsyncIterator[list[str]]:
        cursor = b"0"
        while True:
            cursor, found = await self.storage.redis.read(command, key, cursor, "COUNT", SCAN_COUNT)
            yield _names(found)
            if int(cursor) == 0:
                return


def _names(found: Any) -> list[str]:
    """The members of a ZSCAN reply or the fields of an HSCAN reply, as redis-py gives
    them: (member, score) pairs and a dict (its reply callbacks), else a flat list."""
    if isinstance(found, dict):
        return [name.decode() for name in found]
    if found and isinstance(found[0], tuple):
        return [pair[0].decode() for pair in found]
    return [name.decode() for name in found[::2]]
