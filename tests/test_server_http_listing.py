"""Integration tests of the session listing (``GET /api/v1/sessions``) on the WebSocket
port: filters, sorts and pages, a page bounded in bytes, bad parameters refused, plain
digits read as the other endpoints read them, the default and the most a page takes,
times at the ends of the calendar. On every storage backend
(tests/server_backends.py)."""

from __future__ import annotations

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import get, run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def test_list_sessions_filters_sorts_and_pages() -> None:
    async with run_server() as server:
        manager = server.manager
        for i in range(5):
            await manager.create_session(
                user_id="alice" if i % 2 == 0 else "bob", title=f"chat {i}"
            )
        status, body = await get(server, "/api/v1/sessions?user_id=alice&sort_order=asc")
        assert status == 200 and body["total"] == 3 and body["offset"] == 0
        assert [s["title"] for s in body["sessions"]] == ["chat 0", "chat 2", "chat 4"]
        status, body = await get(server, "/api/v1/sessions?limit=2&offset=1&sort_by=created_at")
        assert status == 200 and body["total"] == 5 and body["limit"] == 2
        assert [s["title"] for s in body["sessions"]] == ["chat 3", "chat 2"]
        status, body = await get(server, "/api/v1/sessions?title_contains=chat%203")
        assert [s["title"] for s in body["sessions"]] == ["chat 3"]
        status, body = await get(server, "/api/v1/sessions?state=active&user_id=bob")
        assert body["total"] == 2


async def test_a_listing_page_is_bounded_in_bytes() -> None:
    async with run_server(max_page_bytes=4096) as server:
        for i in range(10):
            await server.manager.create_session("u", "t" * 1000, extra={"n": i})
        status, body = await get(server, "/api/v1/sessions?limit=10")
        assert status == 200 and body["total"] == 10 and body["limit"] == 10
        assert 1 <= len(body["sessions"]) < 10  # about 1 KB each: what 4 KiB holds
        offset = len(body["sessions"])
        status, more = await get(server, f"/api/v1/sessions?limit=10&offset={offset}")
        assert more["sessions"] and more["sessions"][0]["id"] != body["sessions"][-1]["id"]


async def test_list_sessions_refuses_bad_parameters() -> None:
    async with run_server() as server:
        for query in (
            "sort_by=colour",
            "limit=0",
            "limit=x",
            "state=sleepy",
            "created_after=yesterday",
            # Plain digits and RFC 3339 only, as GET /api/v1/sessions/{id} reads them.
            "limit=1e2",
            "limit=100.0",
            "offset=1e3",
            "created_after=1",
            "active_after=1e10",
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 400 and body["error"]["code"] == "bad_request", query


async def test_list_sessions_reads_plain_digits_as_the_other_endpoints_do() -> None:
    # "05" is plain digits: GET /api/v1/sessions/{id}/events takes it as 5, and so
    # does the list (it answered 400 with msgspec's "Expected `int`, got `str`").
    async with run_server() as server:
        for i in range(3):
            await server.manager.create_session("u", f"t{i}")
        status, body = await get(server, "/api/v1/sessions?limit=02&offset=01")
        assert status == 200, body
        assert (body["limit"], body["offset"], len(body["sessions"])) == (2, 1, 2)


async def test_leading_zeros_do_not_count_against_an_integers_digits() -> None:
    # docs/protocol.md: integers are plain decimal digits, "05" is 5. Twenty digits or
    # more were refused whatever their value ("after_seq must be an integer from 0 to
    # 9223372036854775807" for 1), while 19 digits of the same 1 were read (h419).
    zeros = "0" * 30
    async with run_server() as server:
        for i in range(3):
            await server.manager.create_session("u", f"t{i}")
        session_id = (await get(server, "/api/v1/sessions"))[1]["sessions"][0]["id"]
        status, body = await get(server, f"/api/v1/sessions?limit={zeros}2&offset={zeros}1")
        assert status == 200, body
        assert (body["limit"], body["offset"], len(body["sessions"])) == (2, 1, 2)
        path = f"/api/v1/sessions/{session_id}"
        status, body = await get(server, f"{path}/events?after_seq={zeros}&limit={zeros}7")
        assert status == 200, body
        status, body = await get(server, f"{path}?limit={zeros}1&before={zeros}")
        assert status == 200 and body["start"] == 0, body
        # The value still counts: one past the largest integer is refused, zeros or not.
        for over in ("9223372036854775808", zeros + "9223372036854775808"):
            status, body = await get(server, f"{path}/events?after_seq={over}")
            assert status == 400 and body["error"]["code"] == "bad_request", (over, body)
        # More zeros than int() reads (4,300 digits): a ValueError, 500, before they
        # were dropped for it.
        many = "0" * 4400
        status, body = await get(server, f"/api/v1/sessions?limit={many}2")
        assert status == 200, body
        assert (body["limit"], len(body["sessions"])) == (2, 2), body["limit"]


async def test_list_sessions_without_a_limit_gets_a_page_a_smaller_max_list_page_allows() -> None:
    # --max-list-page below the default page of 100 sessions: a listing that asked for
    # no size was refused (400 "limit must be 1..2") for the default it never sent.
    async with run_server(max_list_page=2) as server:
        for i in range(3):
            await server.manager.create_session("u", f"t{i}")
        status, body = await get(server, "/api/v1/sessions")
        assert status == 200, body
        assert (body["limit"], len(body["sessions"]), body["total"]) == (2, 2, 3)
        # One message for a limit out of range or not a number, with the range it has
        # here ("limit=x" said "an integer from 0 to 9223372036854775807").
        for query in ("limit=3", "limit=x", "limit=0"):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 400, query
            assert body["error"]["message"] == "limit must be an integer from 1 to 2", query


async def test_list_sessions_takes_times_at_the_ends_of_the_calendar() -> None:
    # Valid RFC 3339 times whose UTC falls outside years 1..9999: a bound below every
    # time, or above every time. Not a 500 (the SQLite store converted them to UTC).
    async with run_server() as server:
        await server.manager.create_session("u", "t")
        early, late = "0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"
        for query, total in (
            (f"created_after={early}", 1),
            (f"active_after={early}", 1),
            (f"created_before={late}", 1),
            (f"created_after={late}", 0),
            (f"active_after={late}", 0),
            (f"created_before={early}", 0),
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 200 and body["total"] == total, (query, body)
