"""Requests dropped unanswered to make room in the share of the memory budget that
requests not answered yet may hold (server/http_requests.py): the peers dropped get no
answer, so the operator is told, in ``bamboo_http_requests_dropped_total`` and in a
warning (the first drop, then one line a minute carrying the count left unlogged).
Before, a flood of stalled heads (slowloris) that kept dropping clients was seen
nowhere: no metric, no log line."""

from __future__ import annotations

import asyncio
import contextlib
import re

from structlog.testing import capture_logs

from tests.support import get, run_server

BUDGET = 1 << 20  # a share of 64 KiB for requests not answered yet
FILLER = b"X-Filler: " + b"a" * 7_500 + b"\r\n"  # within the 8 KiB a header line may be
HEAD_PART = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + FILLER * 2
STALLED = 8  # 120 KB of heads: about half of them are dropped


def dropped_total(metrics: str) -> float:
    match = re.search(r"^bamboo_http_requests_dropped_total (\S+)$", metrics, re.M)
    assert match is not None, "bamboo_http_requests_dropped_total not exported"
    return float(match.group(1))


async def test_stalled_heads_dropped_for_room_are_counted_and_logged() -> None:
    async with run_server(memory_budget=BUDGET) as server:
        _, before = await get(server, "/metrics")
        assert dropped_total(before) == 0
        peers = []
        with capture_logs() as logs:
            try:
                for _ in range(STALLED):
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    writer.write(HEAD_PART)  # never ended: a stalled head
                    await writer.drain()
                    peers.append((reader, writer))
                    await asyncio.sleep(0.05)  # read by the server in this order
                # The oldest were dropped without an answer (end of stream or a reset).
                first_reader = peers[0][0]
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(first_reader.read(), 5) == b""
                _, after = await get(server, "/metrics")
            finally:
                for _, writer in peers:
                    writer.close()
        dropped = dropped_total(after)
        assert 1 <= dropped < STALLED, after
        lines = [r for r in logs if r["event"].startswith("request dropped unanswered")]
        # The first drop is told; the others within the minute are only counted.
        assert len(lines) == 1, lines
        assert lines[0]["log_level"] == "warning"
        assert lines[0]["limit"] == BUDGET // 16 and lines[0]["suppressed"] == 0
