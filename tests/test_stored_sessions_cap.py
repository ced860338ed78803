"""``--max-stored-sessions``: the sessions a store keeps, whoever owns them. Sessions
without a user and closed ones are outside ``--max-sessions-per-user`` and hold no log
bytes, so without this cap a peer could leave them behind, each holding its title in
the JSONL store's memory index and on disk, at the creation rate for ever. A real
``serve`` process, raw WebSocket clients, and a restart: the count is the store's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server_process import ServerProcess, assert_no_tracebacks

CAP = 3
TITLE = "\U0001f600" * 1024  # the longest title a peer may give: 4 KiB of UTF-8


def first_reply(
    server: ServerProcess, session_id: str, then: dict[str, Any] | None = None, **fields: Any
) -> tuple[dict[str, Any] | None, tuple[int, str] | None]:
    """The welcome a creating ``hello`` gets, or the close it gets instead."""
    with connect(server.url(session_id), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "create": True, "title": TITLE, **fields}))
        try:
            welcome = json.loads(ws.recv(timeout=10))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, closed
            return None, (closed.rcvd.code, closed.rcvd.reason)
        if then is not None:
            ws.send(json.dumps(then))
            while json.loads(ws.recv(timeout=10)).get("type") not in ("ack", "closed"):
                pass
        return welcome, None


def welcomed(server: ServerProcess, session_id: str, **fields: Any) -> None:
    welcome, close = first_reply(server, session_id, **fields)
    assert welcome is not None and welcome["type"] == "welcome", close


def refused(server: ServerProcess, session_id: str) -> tuple[int, str] | None:
    return first_reply(server, session_id)[1]


def close_session(server: ServerProcess, session_id: str) -> None:
    closing = {"type": "state", "id": 1, "state": "closed"}
    welcome, close = first_reply(server, session_id, closing, user_id="mallory")
    assert welcome is not None, close


@pytest.mark.parametrize("store", ["jsonl", "sqlite"])
def test_sessions_left_behind_stop_at_the_stores_cap(store: str, tmp_path: Path) -> None:
    extra = ["--store", f"sqlite://{tmp_path}/store.db"] if store == "sqlite" else []
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--max-stored-sessions", str(CAP), *extra
    )
    server.start()
    try:
        welcomed(server, "nobodys-1")  # no user: no per-user count holds it
        welcomed(server, "nobodys-2")
        close_session(server, "closed-1")  # closed: out of the per-user count
        assert refused(server, "one-more") == (1013, "the store is full")
        welcomed(server, "nobodys-1")  # attaching creates nothing: never refused
        server.stop()
        server.start()  # the count is what the store holds, not what one process made
        assert refused(server, "after-restart") == (1013, "the store is full")
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


def test_the_default_cap_bounds_the_store() -> None:
    from bamboo_session.server.config import ServerConfig

    assert ServerConfig().max_stored_sessions == 1_000_000
    assert ServerConfig(max_stored_sessions=0).max_stored_sessions == 0  # no cap
    with pytest.raises(ValueError, match="max_stored_sessions"):
        ServerConfig(max_stored_sessions=-1)
