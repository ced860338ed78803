"""What an operator sees of the stored-session caps (server/stored_caps.py): a warning
as the store's count nears ``--max-stored-sessions``, once per crossing; a warning,
rate-limited per cap, when hellos are refused at either cap, with the count of those
left unlogged; ``bamboo_stored_cap_refusals{cap}``. A real ``serve`` and its JSON log,
or a server in this process and its log lines as structlog hands them out; real
WebSocket clients and scrapes of ``/metrics`` either way."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bamboo_session.server import store_stats, stored_caps
from bamboo_session.server.app import BambooServer
from tests.auth_support import SECRET, make_token
from tests.instances import eventually
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach, get, open_peer, run_server

REFUSED = "session creation refused at a stored-session cap"
NEAR = "stored sessions near their cap"


def hello(server: ServerProcess, session_id: str, **fields: Any) -> tuple[int, str] | None:
    """None when a creating ``hello`` is welcomed, else the close it gets."""
    with connect(server.url(session_id), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "create": True, **fields}))
        try:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, closed
            return closed.rcvd.code, closed.rcvd.reason
        return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def refusals(metrics: str, cap: str) -> float:
    found = re.search(rf'^bamboo_stored_cap_refusals_total{{cap="{cap}"}} (\S+)$', metrics, re.M)
    assert found is not None, metrics
    return float(found.group(1))


def lines(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [record for record in records if record.get("event") == event]


def test_a_full_store_is_told_once_per_burst_and_before_it_is_full(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--max-stored-sessions", "2")
    server.start()
    try:
        assert hello(server, "first") is None
        assert hello(server, "second") is None
        assert refusals(scrape(server.port), "max_stored_sessions") == 0  # counts 2 of 2
        for i in range(5):
            assert hello(server, f"more-{i}") == (1013, "the store is full")
        metrics = scrape(server.port)
        assert refusals(metrics, "max_stored_sessions") == 5
        assert refusals(metrics, "max_stored_sessions_per_user") == 0
    finally:
        server.kill()
    records = server.log_records()
    [refused] = lines(records, REFUSED)  # five refusals, one line
    assert refused["level"] == "warning"
    assert refused["cap"] == "max_stored_sessions" and refused["limit"] == 2
    assert refused["suppressed"] == 0 and "user" not in refused
    assert "--default-ttl" in refused["hint"]  # none is set: the TTL is the first remedy
    [near] = lines(records, NEAR)
    assert near["level"] == "warning"
    assert near["cap"] == "max_stored_sessions" and near["limit"] == 2
    assert near["stored"] == 2 and "--default-ttl" in near["hint"]
    assert_no_tracebacks(records)


def test_a_user_at_the_cap_is_named_and_a_ttl_is_not_suggested_when_set(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        "--auth-secret",
        SECRET,
        "--max-stored-sessions-per-user",
        "1",
        "--default-ttl",
        "3600",
    )
    server.start()
    try:
        assert hello(server, "alice-1", token=make_token("alice")) is None
        for i in range(3):
            full = (4403, "too many stored sessions for this user")
            assert hello(server, f"alice-more-{i}", token=make_token("alice")) == full
        assert hello(server, "bob-1", token=make_token("bob")) is None
        metrics = scrape(server.port)
        assert refusals(metrics, "max_stored_sessions_per_user") == 3
        assert refusals(metrics, "max_stored_sessions") == 0
    finally:
        server.kill()
    records = server.log_records()
    [refused] = lines(records, REFUSED)
    assert refused["level"] == "warning" and refused["user"] == "alice"
    assert refused["cap"] == "max_stored_sessions_per_user" and refused["limit"] == 1
    assert refused["suppressed"] == 0
    assert "--default-ttl" not in refused["hint"] and "delete" in refused["hint"]
    assert lines(records, NEAR) == []  # 2 of 1,000,000
    assert_no_tracebacks(records)


async def refused_hello(server: BambooServer, session_id: str) -> int | None:
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello", "create": True})
        code, frames = await peer.closed()
        assert frames == [], frames
        return code


async def test_a_later_line_carries_the_refusals_left_unlogged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = 3.0  # long enough for a burst on a loaded machine, short for a test
    monkeypatch.setattr(stored_caps, "REFUSAL_LOG_EVERY", every)
    async with run_server(max_stored_sessions=1) as server:
        async with attach(server, "kept", create=True):
            pass
        with capture_logs() as logs:
            started = asyncio.get_running_loop().time()
            burst = [refused_hello(server, f"burst-{i}") for i in range(4)]
            assert await asyncio.gather(*burst) == [1013] * 4
            assert asyncio.get_running_loop().time() - started < every  # one window
            assert [log["suppressed"] for log in lines(logs, REFUSED)] == [0]
            await asyncio.sleep(every)
            assert await refused_hello(server, "later") == 1013
        assert [log["suppressed"] for log in lines(logs, REFUSED)] == [0, 3]
        assert [log["log_level"] for log in lines(logs, REFUSED)] == ["warning"] * 2


async def test_nearing_the_cap_is_told_once_per_crossing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_stats, "COUNT_EVERY", 0.0)  # every scrape counts afresh

    async def scrape_in_process() -> None:
        status, _ = await get(server, "/metrics")
        assert status == 200

    async with run_server(max_stored_sessions=10) as server:
        with capture_logs() as logs:
            for i in range(8):
                async with attach(server, f"s{i}", create=True):
                    pass
            await scrape_in_process()  # 8 of 10
            assert lines(logs, NEAR) == []
            async with attach(server, "s8", create=True):
                pass
            await scrape_in_process()  # 9 of 10: crossed
            await scrape_in_process()  # still over: said already
            assert [(log["stored"], log["limit"]) for log in lines(logs, NEAR)] == [(9, 10)]
            await server.manager.delete_session("s8")
            await server.manager.delete_session("s7")
            await scrape_in_process()  # 7 of 10: below again
            async with attach(server, "s9", create=True):
                pass
            async with attach(server, "s10", create=True):
                pass
            await scrape_in_process()  # 9 of 10: crossed again
        assert [log["stored"] for log in lines(logs, NEAR)] == [9, 9]


async def test_nearing_the_cap_is_told_without_a_scrape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Nobody scrapes /metrics: the server counts on its own, every ``WATCH_EVERY``
    (30 s; shortened here), and at its start. Before, the count, and so the warning,
    came only with a scrape."""
    monkeypatch.setattr(store_stats, "WATCH_EVERY", 0.2)
    async with run_server(tmp_path, max_stored_sessions=10) as server:
        with capture_logs() as logs:
            for i in range(9):
                async with attach(server, f"s{i}", create=True):
                    pass
            await eventually(lambda: lines(logs, NEAR), timeout=10)
        [near] = lines(logs, NEAR)
        assert (near["stored"], near["limit"], near["log_level"]) == (9, 10, "warning")
    # A server started on a store already past 90% says so from the start, scraped or not.
    monkeypatch.setattr(store_stats, "WATCH_EVERY", 3600.0)
    async with run_server(tmp_path, max_stored_sessions=10):
        # Its start configured the log: captured from here, before its first count,
        # which waits for this test to yield the loop.
        with capture_logs() as logs:
            await eventually(lambda: lines(logs, NEAR), timeout=10)
    assert [log["stored"] for log in lines(logs, NEAR)] == [9]
