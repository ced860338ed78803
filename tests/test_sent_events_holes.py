"""A log with a hole in it (a SQLite store with an event's row deleted behind its back),
under the check every event frame passes on its way to a socket (server/sent_events.py):
a resume's replay reads the log itself, so a resume could only meet the same hole again.
The replay goes on past it, counted and logged; the client sees the hole for itself
(the Python client raises SequenceError) rather than being closed 1011 and resuming
into it again and again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bamboo_session.protocol.client import BambooClient, SequenceError
from bamboo_session.server.sent_events import GAP_IN_LOG, PATHS
from tests.replay_support import publish
from tests.support import attach, run_server

HOLE = 3


async def stored_with_a_hole(store: str, directory: Path) -> str:
    """Five events stored in session "h", then the row of event ``HOLE`` deleted with
    the server stopped; the log's epoch."""
    async with (
        run_server(directory, store=store) as server,
        attach(server, "h", create=True) as (agent, welcome),
    ):
        await publish(agent, 5)
    db = sqlite3.connect(directory / "store.db")
    db.execute("DELETE FROM events WHERE session_id = 'h' AND seq = ?", (HOLE,))
    assert db.total_changes == 1
    db.commit()
    db.close()
    epoch: str = welcome["epoch"]
    return epoch


async def test_a_resume_across_a_hole_in_the_log_is_given_it_as_it_is(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'store.db'}"
    epoch = await stored_with_a_hole(store, tmp_path)
    async with run_server(tmp_path, store=store) as server:
        with capture_logs() as logs:
            async with attach(server, "h", last_seq=0, epoch=epoch) as (viewer, welcome):
                assert welcome["resumed"] and welcome["replay"] == 5
                given = [(await viewer.recv_type("event"))["seq"] for _ in range(4)]
                assert given == [1, 2, 4, 5]
                pong = await viewer.request({"type": "ping", "id": "open"}, "pong")
                assert pong["id"] == "open"
        (line,) = [line for line in logs if line["event"] == GAP_IN_LOG]
        assert (line["seq"], line["sent_seq"], line["path"]) == (4, 2, "replay")
        get = server.metrics.registry.get_sample_value
        gaps: dict[str, Any] = {p: get("bamboo_event_gaps_total", {"path": p}) for p in PATHS}
        assert gaps == {"flush": 0, "writer": 0, "replay": 1, "close": 0}
        client = await BambooClient.connect(
            f"ws://127.0.0.1:{server.port}", "h", last_seq=0, epoch=epoch, max_retries=3
        )
        try:
            events = client.events()
            for seq in (1, 2):
                assert getattr(await anext(events), "seq", None) == seq
            with pytest.raises(SequenceError) as hole:
                await anext(events)
            assert (hole.value.expected, hole.value.got) == (HOLE, HOLE + 1)
        finally:
            await client.close()
