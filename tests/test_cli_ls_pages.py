"""``bamboo-session ls --cursor`` and ``--all``: the page after a cursor, and every page
to the end, offline on an SQLite store (in-process) and over HTTP from a running server
(as processes, forked); the next page's cursor in the table and in ``--json``; a
server's cursor read offline on its store; bad cursors as one line and status 1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import io
import json
import urllib.parse
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.persistence import SessionFilter, SortBy, SortOrder, open_storage
from bamboo_session.protocol import Message, Session
from bamboo_session.server import tools_listing
from bamboo_session.server.cli import main
from bamboo_session.server.list_cursor import ListingPage
from bamboo_session.server.tools import ToolError
from tests.http_support import http_server_of
from tests.support import run_server
from tests.test_cli_tools import assert_one_line_error, cli

BASE = datetime(2026, 3, 1, tzinfo=UTC)
SESSIONS = 7


async def fill(url: str) -> None:
    """Seven sessions of two users, created a minute apart, with 0 to 6 messages
    appended in another order than they were created (so the sorts differ)."""
    async with await open_storage(url, cleanup_interval=None) as storage:
        for number in range(SESSIONS):
            moment = BASE + timedelta(minutes=number)
            session = Session.new(f"s{number}", user_id=f"u{number % 2}", now=moment)
            await storage.create_session(session)
        for number in (3, 6, 0, 5, 1, 4, 2):
            for turn in range((number * 5) % SESSIONS):
                await storage.append_message(f"s{number}", Message.user(f"q{turn}"))


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'store.db'}"
    asyncio.run(fill(url))
    return url


def ls(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ls", *argv])
    out, err = capsys.readouterr()
    return code, out, err


SORTS: list[tuple[str, ...]] = [
    (),
    ("--sort-by", "updated_at"),
    ("--sort-by", "message_count", "--sort-order", "asc"),
    ("--sort-by", "updated_at", "--user-id", "u1"),
]


@pytest.mark.parametrize("terms", SORTS)
def test_json_pages_follow_their_cursors_to_the_end(
    store: str, capsys: pytest.CaptureFixture[str], terms: tuple[str, ...]
) -> None:
    code, out, _ = ls(capsys, "--store", store, "--json", *terms)
    assert code == 0
    whole = json.loads(out)
    assert whole["next_cursor"] is None
    expected = [meta["id"] for meta in whole["sessions"]]
    assert len(expected) == whole["total"] >= 3

    ids: list[str] = []
    cursor: list[str] = []
    while True:
        code, out, err = ls(capsys, "--store", store, "--json", "--limit", "2", *cursor, *terms)
        assert code == 0, err
        page = json.loads(out)
        assert page["total"] == len(expected) and len(page["sessions"]) <= 2
        ids += [meta["id"] for meta in page["sessions"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert ids == expected


def test_the_table_prints_the_next_cursor_and_what_follows_it(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ls(capsys, "--store", store, "--limit", "3")
    assert code == 0
    *rows, counted, next_line = out.splitlines()
    assert counted == f"1-3 of {SESSIONS} sessions"
    assert [row.split()[0] for row in rows[1:]] == ["s6", "s5", "s4"]
    assert next_line.startswith("next page: --cursor ")
    cursor = next_line.split()[-1]
    code, out, _ = ls(capsys, "--store", store, "--json", "--limit", "3")
    assert json.loads(out)["next_cursor"] == cursor

    code, out, _ = ls(capsys, "--store", store, "--limit", "3", "--cursor", cursor)
    assert code == 0
    *rows, counted, next_line = out.splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["s3", "s2", "s1"]
    assert counted == f"3 after the cursor, of {SESSIONS} sessions"
    code, out, _ = ls(capsys, "--store", store, "--cursor", next_line.split()[-1])
    *rows, counted = out.splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["s0"]
    assert counted == f"1 after the cursor, of {SESSIONS} sessions"  # and no next page


@pytest.mark.parametrize("terms", SORTS)
def test_all_lists_every_page_once(
    store: str, capsys: pytest.CaptureFixture[str], terms: tuple[str, ...]
) -> None:
    code, out, _ = ls(capsys, "--store", store, "--json", *terms)
    expected = [meta["id"] for meta in json.loads(out)["sessions"]]

    code, out, err = ls(capsys, "--store", store, "--all", "--limit", "2", *terms)
    assert code == 0, err
    header, *rows, counted = out.splitlines()
    assert header.split()[0] == "ID" and "next page" not in out
    assert [row.split()[0] for row in rows] == expected
    assert counted == f"1-{len(expected)} of {len(expected)} sessions"
    widths = {row.index(row.split()[2]) for row in rows}  # the STATE column, aligned
    assert len(widths) == 1

    code, out, err = ls(capsys, "--store", store, "--all", "--limit", "2", "--json", *terms)
    assert code == 0, err
    whole = json.loads(out)
    assert [meta["id"] for meta in whole["sessions"]] == expected
    assert whole["next_cursor"] is None and whole["total"] == len(expected)

    code, out, _ = ls(capsys, "--store", store, "--all", "--limit", "2", "--offset", "1", *terms)
    assert [row.split()[0] for row in out.splitlines()[1:-1]] == expected[1:]


def test_all_of_nothing_is_an_empty_listing(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(capsys, "--store", store, "--all", "--json", "--user-id", "nobody")
    assert code == 0
    assert json.loads(out) == {
        "sessions": [],
        "total": 0,
        "offset": 0,
        "limit": 100,
        "next_cursor": None,
    }


def test_a_cursor_it_cannot_take_is_one_line(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ls(capsys, "--store", store, "--json", "--limit", "2")
    cursor = json.loads(out)["next_cursor"]
    for argv, reason in (
        (["--cursor", cursor, "--offset", "1"], "cannot be used together"),
        (["--cursor", cursor, "--user-id", "u1"], "belongs to another listing"),
        (["--cursor", cursor, "--sort-order", "asc"], "belongs to another listing"),
        (["--cursor", cursor[:-3]], "not one this server made"),
    ):
        code, out, err = ls(capsys, "--store", store, *argv)
        assert_one_line_error(code, err)
        assert reason in err and out == "", (argv, err)


async def test_over_http_and_a_server_s_cursor_offline(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    await fill(url)
    async with run_server(tmp_path / "data", store=url) as server:
        http_url = f"http://127.0.0.1:{server.port}"
        code, out, err = await cli("ls", "--url", http_url, "--json", "--sort-by", "updated_at")
        assert code == 0, err
        expected = [meta["id"] for meta in json.loads(out)["sessions"]]

        pages: list[dict[str, Any]] = []
        cursor: list[str] = []
        while not pages or pages[-1]["next_cursor"] is not None:
            argv = ["--url", http_url, "--json", "--limit", "3", "--sort-by", "updated_at"]
            code, out, err = await cli("ls", *argv, *cursor)
            assert code == 0, err
            pages.append(json.loads(out))
            cursor = ["--cursor", pages[-1]["next_cursor"] or ""]
        assert [meta["id"] for page in pages for meta in page["sessions"]] == expected

        code, out, err = await cli(
            "ls", "--url", http_url, "--all", "--limit", "2", "--sort-by", "updated_at"
        )
        assert code == 0, err
        assert [line.split()[0] for line in out.splitlines()[1:-1]] == expected

        code, out, err = await cli("ls", "--url", http_url, "--cursor", "AAAA")
        assert_one_line_error(code, err)
        assert "HTTP 400" in err and "cursor" in err

    # The server's cursor, offline on its store (the server gone: SQLite is one process's).
    server_cursor = pages[0]["next_cursor"]
    code, out, err = await cli(
        "ls",
        "--store",
        url,
        "--json",
        "--limit",
        "3",
        "--sort-by",
        "updated_at",
        "--cursor",
        server_cursor,
    )
    assert code == 0, err
    assert json.loads(out)["sessions"] == pages[1]["sessions"]


async def test_all_stops_where_a_moving_key_would_keep_it_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Oldest update first, one a page, each session touched once its page is read
    (as steady activity would): the touched ones come after the cursor again and
    again. ``--all`` stops once it has listed more than the listing holds, its JSON
    whole, and says why."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    await fill(url)
    filter = SessionFilter(sort_by=SortBy.UPDATED_AT, sort_order=SortOrder.ASC, limit=1)
    args = argparse.Namespace(cursor=None, all=True, json=True)
    async with await open_storage(url, cleanup_interval=None) as storage:
        reads = 0

        async def read_then_touch(asked: SessionFilter, cursor: str | None) -> ListingPage:
            nonlocal reads
            reads += 1
            assert reads <= 50, "the listing did not stop"
            page = await tools_listing._page_offline(storage, asked, cursor)
            for meta in page.sessions:
                await storage.append_message(meta.id, Message.user("again"))
            return page

        output = tools_listing._Json(filter)
        with pytest.raises(ToolError, match="stopped after 8 sessions, more than the listing"):
            await tools_listing._list(args, filter, output, read_then_touch)
    printed = json.loads(capsys.readouterr().out)
    ids = [meta["id"] for meta in printed["sessions"]]
    assert len(ids) == 8 and len(set(ids)) == SESSIONS and printed["next_cursor"]


async def test_all_cut_short_by_its_server_ends_with_the_cursor_to_resume_from(
    tmp_path: Path,
) -> None:
    """The server stops (a restart) after ``--all`` read two pages: the error is raised,
    and what was printed ends as a listing does, its JSON whole and its ``next_cursor``
    the place to resume from; resumed there (offline, the server gone), the rest of
    the listing follows, each session once."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    await fill(url)
    filter = SessionFilter(limit=2)
    async with run_server(tmp_path / "data", store=url) as server:
        args = argparse.Namespace(
            cursor=None, all=True, json=True, url=f"http://127.0.0.1:{server.port}", token=None
        )
        code, out, err = await cli("ls", "--url", args.url, "--json")
        assert code == 0, err
        expected = [meta["id"] for meta in json.loads(out)["sessions"]]
        reads = 0

        async def read_then_stop(asked: SessionFilter, cursor: str | None) -> ListingPage:
            nonlocal reads
            reads += 1
            page = await tools_listing._page_over_http(args, asked, cursor)
            if reads == 2:
                with redirect_stdout(io.StringIO()):  # its lines, not the listing's
                    await server.stop()
            return page

        printed_out = io.StringIO()  # the server logs to stdout: the listing's apart
        with pytest.raises(ToolError, match="cannot reach"), redirect_stdout(printed_out):
            await tools_listing._list(args, filter, tools_listing._Json(filter), read_then_stop)
    printed = json.loads(printed_out.getvalue())
    listed = [meta["id"] for meta in printed["sessions"]]
    assert listed == expected[:4] and printed["next_cursor"] is not None

    code, out, err = await cli(
        "ls", "--store", url, "--json", "--all", "--limit", "2", "--cursor", printed["next_cursor"]
    )
    assert code == 0, err
    assert listed + [meta["id"] for meta in json.loads(out)["sessions"]] == expected


@contextlib.contextmanager
def server_before_cursors(listing: list[dict[str, Any]]) -> Iterator[str]:
    """The listing endpoint of a server before cursors (0.1.0): pages by ``offset`` and
    ``limit`` only, its answer without ``next_cursor``, an unknown ``cursor`` ignored.
    (No older tree is at hand to run; its answer's shape is all that matters here.)"""

    class Listing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query.get("limit", ["100"])[0])
            page = listing[offset : offset + limit]
            answer = {"sessions": page, "total": len(listing), "offset": offset, "limit": limit}
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server_of(Listing) as url:
        yield url


async def test_cursor_paging_against_a_server_before_cursors_is_refused(store: str) -> None:
    """A server before cursors ignores ``cursor=`` and sends no ``next_cursor``: the page
    after a cursor would be its first page again, and ``--all`` would stop after one
    page, status 0. Both fail in one line naming --offset; a plain page, or an --all
    that one page holds whole, are printed as before."""
    async with await open_storage(store, cleanup_interval=None, read_only=True) as storage:
        listed = await storage.list_sessions(SessionFilter())
    listing = msgspec.to_builtins(listed.sessions)
    code, out, err = await cli("ls", "--store", store, "--json", "--limit", "2")
    cursor = json.loads(out)["next_cursor"]
    with server_before_cursors(listing) as url:
        for argv in (["--cursor", cursor], ["--all"], ["--all", "--json"]):
            code, out, err = await cli("ls", "--url", url, "--limit", "2", *argv)
            assert_one_line_error(code, err)
            assert "does not page by cursor" in err and "--offset" in err, (argv, err)
        code, out, err = await cli("ls", "--url", url, "--json", "--limit", "2", "--offset", "2")
        assert code == 0, err
        page = json.loads(out)
        assert [meta["id"] for meta in page["sessions"]] == [m["id"] for m in listing[2:4]]
        assert page["next_cursor"] is None
        code, out, err = await cli("ls", "--url", url, "--all", "--json", "--limit", "100")
        assert code == 0, err
        assert json.loads(out)["sessions"] == listing
