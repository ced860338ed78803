"""``list_sessions`` on Redis: a SessionFilter's predicates, sort key and page as the
arguments of ``list.lua`` (times in microseconds, each optional value as ``""`` when
absent or ``"=" + value``), and the listing of a large candidate set in steps.

Redis runs one script at a time, so a listing that read 100,000 candidates in one
call held every instance's appends for 0.5 to 1 s (bench/redis_listing.py). A source
of more than ``LIST_STEP`` candidates is now read ``LIST_STEP`` members per call, in
its order, each call returning the matches it found with their sort keys; this side
sorts them (score, then id, as one call would), cuts the page and reads its metadata.
A listing that does not change meanwhile gets what one call would give. One that
does: a session is counted once (the last step that saw it wins, and one that read it
again no longer matching drops it), sorted by the key its step read; one that joins
the source behind the cursor is not seen, one that leaves it ahead of the cursor is
not either, and one deleted before its page is read is left out of the page (not out
of ``total``), as one call does too. A range of activity times is walked up to a
bound and then through the sessions touched meanwhile (list.lua says how): each
session in it from start to end is read, and the walk ends however often they are
touched.

A process makes one listing in steps at a time (``RedisStorage.stepped_listing``), in
the order they came: interleaved, 16 listings of 100,000 candidates made at once each
took as long as all of them, and all 16 were past the server's read deadline (503;
one call each served one of them), each holding its matches meanwhile (some 25 MB at
100,000, counted nowhere). One at a time, three of the 16 are served.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from bamboo_session.protocol.micros import to_micros

from ..base import SessionFilter, SessionListResult, SortBy, SortOrder
from .layout import Layout
from .listing_page import EveryMatch, HoleInPage, PageKeeper

if TYPE_CHECKING:
    from .storage import RedisStorage

# An offset or a limit as list.lua gets it, at most: a sorted set holds fewer members
# (2^32 - 1), so an offset of this is past every end; and Lua, whose numbers are
# doubles, writes a larger one as "4.6116860184273879e+18", which ZRANGEBYSCORE's
# LIMIT refuses (an offset past 2^53 was a 503 for a request with nothing wrong in it).
SCRIPT_INDEX_MAX: Final = 2**32

# Candidates one list.lua call reads: a title checked costs some 6 us of Redis each
# (bench/redis_listing.py), so a call holds Redis for a few ms at most.
LIST_STEP: Final = 250

# What one listing in steps may hold while its steps run (listing_page.py), as it
# counts it: a page at offset 50,000 among 100,000 matches peaked at 14.7 MiB
# (tracemalloc, bench/RESULTS.md), a page of 100 at 1.1 MiB; every match held was
# 23.5 MiB at 100,000.
LIST_BYTES: Final = 16 * 2**20

# What list.lua's first call of a listing gets after the query, and each later one
# gets from the call before: the source, the cursor's score and id, the bound and
# phase of a walk over activity times ('' for a walk over creation times), and the
# source's highest score at the first call (above it, a session may be read again).
FIRST_STEP: Final = ("", "", "", "", "", "")

SORT_SETS: Final = {
    SortBy.CREATED_AT: "created",
    SortBy.UPDATED_AT: "updated",
    SortBy.LAST_ACTIVITY_AT: "active",
    SortBy.MESSAGE_COUNT: "msgs",
}


async def list_sessions(storage: RedisStorage, query: SessionFilter) -> SessionListResult:
    args = list_args(storage.layout, query, storage.list_step)
    offset, limit = max(query.offset, 0), max(query.limit, 0)
    size, descending = offset + limit, query.sort_order is SortOrder.DESC
    steps = _Steps(storage)
    reply = await steps.run(args, FIRST_STEP)
    if reply[0] != 0:
        # One listing in steps at a time on this process (the first step aside, taken
        # before anyone knew it would be one), first come first served.
        async with storage.stepped_listing:
            kept = await _steps_kept(steps, query, args, reply)
            if kept is not None:
                ids, total = kept
            else:
                # Read again, the first reading's candidates already let go: held
                # beside every match, a listing would hold up to twice list_bytes.
                reply = await steps.run(args, FIRST_STEP)
                if reply[0] != 0:
                    every = EveryMatch(storage.list_bytes, after_entry(query))
                    await _steps_whole(steps, args, reply, every)
                    ids, total = every.result(size, descending)
    # What the calls read, as each said: a user of 3 sessions was charged for a step's
    # 250 (every call counted as a whole step) where Redis read 3.
    examined = steps.examined
    if reply[0] == 0:  # one call's listing: the page's metadata, read with it
        sessions = [storage.served_metadata(flat) for flat in reply[2:]]
        return SessionListResult(sessions, int(reply[1]), offset, limit, examined)
    page = [id_.decode() for id_ in ids[offset:]]
    hashes = await storage.redis.read_many([("HGETALL", storage.layout.meta(i)) for i in page])
    sessions = [storage.served_metadata(flat) for flat in hashes if flat]
    return SessionListResult(sessions, total, offset, limit, examined)


class _Steps:
    """A listing's calls of list.lua, and how many members of the source they read."""

    __slots__ = ("examined", "storage")

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        self.examined = 0

    async def run(self, args: list[str | int], step: Sequence[Any]) -> list[Any]:
        """list.lua's call with the query's ``args`` and where the last call ended: its
        reply without the count of members it read, which is added up."""
        raw: list[Any] = await self.storage.redis.run("list", [], [*args, *step])
        self.examined += int(raw[-1])
        return raw[:-1]


async def _steps_kept(
    steps: _Steps, query: SessionFilter, args: list[str | int], reply: list[Any]
) -> tuple[list[bytes], int] | None:
    """The page's ids (from the start) and the total of a listing in steps from its
    first step's ``reply`` on, keeping only what sorts into the page; None if a late
    reading left a hole in it. What it kept goes with this call's frame (the HoleInPage
    caught here, whose traceback holds that frame, included)."""
    size = max(query.offset, 0) + max(query.limit, 0)
    descending = query.sort_order is SortOrder.DESC
    keeper = PageKeeper(size, descending, steps.storage.list_bytes, after_entry(query))
    try:
        while True:
            early, matches = _matches_of(reply)
            keeper.add(matches, early)
            if reply[0] == 2:
                return keeper.result()
            reply = await steps.run(args, reply[1 : 1 + len(FIRST_STEP)])
    except HoleInPage:
        return None


async def _steps_whole(
    steps: _Steps, args: list[str | int], reply: list[Any], every: EveryMatch
) -> None:
    """The steps of a listing from its first ``reply`` on, into ``every``."""
    while True:
        every.add(_matches_of(reply)[1])
        if reply[0] == 2:
            return
        reply = await steps.run(args, reply[1 : 1 + len(FIRST_STEP)])


def _matches_of(reply: list[Any]) -> tuple[int, list[bytes]]:
    """How many of a step's matches are early, and its flat ``id, sort key, ...``."""
    if reply[0] == 2:
        return int(reply[1]), reply[2:]
    return int(reply[len(FIRST_STEP) + 1]), reply[len(FIRST_STEP) + 2 :]


def list_args(layout: Layout, query: SessionFilter, step: int) -> list[str | int]:
    return [
        layout.index,
        f"{layout.prefix}:",
        _optional(query.user_id),
        _optional(None if query.state is None else query.state.value),
        _time(query.created_after),
        _time(query.created_before),
        _time(query.active_after),
        _optional(query.title_contains),
        SORT_SETS[query.sort_by],
        query.sort_order.value,
        min(max(query.offset, 0), SCRIPT_INDEX_MAX),
        min(max(query.limit, 0), SCRIPT_INDEX_MAX),
        step,
        *_position(query),
    ]


def _position(query: SessionFilter) -> tuple[str, str]:
    """The keyset position as list.lua takes it: the sort score (microseconds for a
    time, as the sort sets hold them) and the id, or two ''."""
    if query.after is None:
        return "", ""
    key = query.after.key
    return str(to_micros(key) if isinstance(key, datetime) else key), query.after.id


def after_entry(query: SessionFilter) -> tuple[float, bytes] | None:
    """The keyset position as the steps' caller compares its (score, id) entries."""
    score, id_ = _position(query)
    return None if score == "" else (float(score), id_.encode())


def _optional(value: str | None) -> str:
    return "" if value is None else "=" + value


def _time(moment: datetime | None) -> str:
    return "" if moment is None else f"={to_micros(moment)}"
