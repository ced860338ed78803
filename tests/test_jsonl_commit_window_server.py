"""The JSONL store's commit window seen from a real server and real WebSocket clients
(``jsonl://...?commit_window=0.05``, the largest the URL takes): a lone event, after a
quiet longer than the window, is committed at once rather than at the window's end: an
event another client sends once the server has the first is in a commit of its own.
Counted (the store's group commits), not timed: a lone event held for the window would
have the second, sent within the window, join its commit (the test fails so when the
window is counted from each lone append instead of from the last commit's start)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import attach, run_server
from tests.test_jsonl_writer_cancelled import until

WINDOW = 0.05


def writer_of(server: Any) -> Any:
    return server.storage._writer


async def test_a_lone_event_is_committed_at_once_not_at_the_window_s_end(
    tmp_path: Path,
) -> None:
    store = f"jsonl://{tmp_path}?commit_window={WINDOW}"
    async with (
        run_server(store=store) as server,
        attach(server) as (alone, _),  # each in a new session of its own
        attach(server) as (next_one, _),
    ):
        writer = writer_of(server)
        for peer, number in ((alone, 1), (next_one, 1)):  # logs open, the helper up
            await peer.request(event(number), "ack")
        for number in range(2, 5):
            await asyncio.sleep(WINDOW * 2)  # past the window of the last commit
            commits = writer.batches
            await alone.send(event(number))
            await until(has_taken(writer, commits))
            await next_one.send(event(number))
            assert (await alone.recv_type("ack"))["seq"] == number
            assert (await next_one.recv_type("ack"))["seq"] == number
            assert writer.batches == commits + 2  # the second did not join the first


def has_taken(writer: Any, commits: int) -> Callable[[], bool]:
    """Whether the server has an event: queued, its commit under way, or done."""
    return lambda: bool(writer._queue or writer._in_flight or writer.batches > commits)


def event(number: int) -> dict[str, Any]:
    return {"type": "event", "id": number, "event": {"type": "token", "content": str(number)}}
