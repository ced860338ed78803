"""``GET /api/v1/sessions`` paged by ``cursor``, on every store: each page's
``next_cursor`` leads to the next, in the listing's order, to ``null`` at the end; a
listing paged so while sessions are created and expire (and are removed) lists every
session that exists throughout exactly once; a cursor of another filter or sort, with
a non-zero offset, forged, corrupt or too long is 400 ``bad_request``, never a 500.
"""

from __future__ import annotations

import base64
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol.models import Session, SessionMetadata, SessionState
from bamboo_session.server.app import BambooServer
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import get, run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")

BASE = datetime(2026, 1, 1, tzinfo=UTC)
SORTS = ("created_at", "updated_at", "last_activity_at", "message_count")


async def seed(server: BambooServer, session_id: str, minute: int, user: str = "u1") -> None:
    """A session of ``user`` created ``minute`` minutes after BASE (several share one)."""
    moment = BASE + timedelta(minutes=minute)
    metadata = SessionMetadata(
        id=session_id,
        user_id=user,
        title=f"Chat {session_id}",
        created_at=moment,
        updated_at=moment,
        last_activity_at=moment,
    )
    await server.manager.storage.create_session(Session(metadata=metadata))


async def expire_and_remove(server: BambooServer, session_id: str) -> None:
    """What a TTL run out and the cleanup after it do to a session."""
    await server.manager.storage.update_session_state(session_id, SessionState.EXPIRED)
    await server.manager.delete_session(session_id)


async def listing(server: BambooServer, query: str) -> dict[str, Any]:
    status, body = await get(server, f"/api/v1/sessions?{query}")
    assert status == 200, (query, body)
    assert isinstance(body, dict)
    return body


async def paged(server: BambooServer, query: str, between: Any = None) -> list[str]:
    """The ids of every page of ``query`` by cursor, in order (``between`` awaited after
    each page); bounded: a listing that never ends fails the test."""
    ids: list[str] = []
    cursor: str | None = None
    for page_number in range(200):
        extra = "" if cursor is None else "&cursor=" + urllib.parse.quote(cursor)
        body = await listing(server, query + extra)
        ids += [session["id"] for session in body["sessions"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
        if between is not None:
            await between(page_number)
    raise AssertionError(f"{query}: no end after 200 pages")


async def test_cursor_pages_give_the_whole_listing_in_order() -> None:
    async with run_server() as server:
        for number in range(11):
            await seed(server, f"s{number:02d}", minute=number // 3)  # ties of three
        for sort in SORTS:
            for order in ("asc", "desc"):
                query = f"sort_by={sort}&sort_order={order}"
                whole = await listing(server, query)
                assert whole["next_cursor"] is None and whole["total"] == 11
                expected = [session["id"] for session in whole["sessions"]]
                for limit in (1, 2, 3, 10):
                    assert await paged(server, f"{query}&limit={limit}") == expected, limit
        first = await listing(server, "limit=4&user_id=u1")
        assert first["total"] == 11 and first["offset"] == 0 and first["limit"] == 4
        cursor = urllib.parse.quote(first["next_cursor"])
        second = await listing(server, f"limit=4&user_id=u1&cursor={cursor}&offset=0")
        assert second["total"] == 11  # every match, as with offset
        assert [s["id"] for s in second["sessions"]] == expected_desc(11)[4:8]
        # A page that ends exactly at the last session says so: no empty page after.
        assert (await listing(server, "limit=11"))["next_cursor"] is None


def expected_desc(count: int) -> list[str]:
    return sorted((f"s{n:02d}" for n in range(count)), key=lambda i: (int(i[1:]) // 3, i))[::-1]


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_sessions_present_throughout_are_listed_once_while_others_come_and_go(
    order: str,
) -> None:
    async with run_server() as server:
        for number in range(60):
            await seed(server, f"p{number:02d}", minute=number // 4)
        doomed = [f"d{number:02d}" for number in range(30)]
        for number, session_id in enumerate(doomed):
            await seed(server, session_id, minute=number // 2)
        made = 0

        async def churn(page_number: int) -> None:
            # Before each page: new sessions all over the order (older and newer than
            # the cursor, some tied with it), and three of the doomed ones gone.
            nonlocal made
            for _ in range(3):
                await seed(server, f"n{made:03d}", minute=(made * 7) % 20)
                made += 1
            for session_id in doomed[page_number * 3 : page_number * 3 + 3]:
                await expire_and_remove(server, session_id)

        ids = await paged(server, f"user_id=u1&limit=5&sort_order={order}", churn)
        present = [i for i in ids if i.startswith("p")]
        assert sorted(present) == [f"p{number:02d}" for number in range(60)]  # each once
        assert len(set(ids)) == len(ids)  # and nothing at all twice
        assert made > 0


async def test_a_cursor_of_another_listing_is_refused() -> None:
    async with run_server() as server:
        for number in range(3):
            await seed(server, f"s{number}", minute=number)
        body = await listing(server, "limit=1&sort_by=created_at")
        cursor = urllib.parse.quote(body["next_cursor"])
        for other in (
            "sort_by=updated_at",
            "sort_order=asc",
            "user_id=u2",
            "state=active",
            "title_contains=Chat",
            "created_after=2025-01-01T00:00:00Z",
        ):
            status, refusal = await get(server, f"/api/v1/sessions?limit=1&{other}&cursor={cursor}")
            assert status == 400, other
            assert refusal["error"]["code"] == "bad_request"
            assert "another listing" in refusal["error"]["message"]
        # The same instant written another way is the same listing.
        same = "created_after=2025-01-01T01:00:00%2B01:00"
        first = await listing(server, f"limit=1&{same}")
        again = urllib.parse.quote(first["next_cursor"])
        later = await listing(server, f"limit=1&created_after=2025-01-01T00:00:00Z&cursor={again}")
        assert [s["id"] for s in later["sessions"]] == ["s1"]
        status, refusal = await get(server, f"/api/v1/sessions?limit=1&offset=1&cursor={cursor}")
        assert status == 400 and "offset" in refusal["error"]["message"]


async def test_forged_corrupt_or_long_cursors_are_400() -> None:
    async with run_server() as server:
        await seed(server, "s1", minute=0)
        real = await _a_real_cursor(server)
        fingerprint = msgspec.msgpack.decode(_unpacked(real))[1]

        def forged(*fields: Any) -> str:
            return base64.urlsafe_b64encode(msgspec.msgpack.encode(list(fields))).decode()

        for cursor in (
            "x",  # not base64 of anything
            "!!!!",
            real[:-3],  # cut short
            "A" * 257,  # longer than any cursor
            forged(2, fingerprint, 0, "s1"),  # another version
            forged(1, fingerprint, 0, "not a session id"),
            forged(1, fingerprint, 2**64 - 1, "s1"),  # no time
            forged(1, fingerprint, -(2**62), "s1"),
            forged(1, fingerprint, "now", "s1"),
            forged(1, b"12345678", 0, "s1"),  # another listing
            forged(1, fingerprint, 0),
            forged(1, fingerprint, 0, "s1", "more"),  # was taken, the rest ignored (h419)
            forged({"a": 1}),
            base64.urlsafe_b64encode(b"\xc1\xff").decode(),
        ):
            status, refusal = await get(
                server, "/api/v1/sessions?limit=1&cursor=" + urllib.parse.quote(cursor)
            )
            assert status == 400, (cursor, refusal)
            assert refusal["error"]["code"] == "bad_request", cursor
        # A well-formed cursor a client made is only a place: the page after it.
        start = forged(1, fingerprint, 0, "zzz")  # 1970: before every session
        body = await listing(server, "limit=1&cursor=" + urllib.parse.quote(start))
        assert body["sessions"] == [] and body["next_cursor"] is None and body["total"] == 2


async def _a_real_cursor(server: BambooServer) -> str:
    await seed(server, "s2", minute=1)
    cursor = (await listing(server, "limit=1"))["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def _unpacked(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
