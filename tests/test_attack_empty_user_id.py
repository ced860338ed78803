"""A ``hello`` whose ``user_id`` is ``""`` names no user, on a real server over a real
WebSocket, on every store (tests/server_backends.py), in JSON and in MessagePack.

Clients in Go (a struct field without ``omitempty``) and other languages that fill an
unset string with ``""`` send ``"user_id": ""`` from every anonymous peer. Read as a
user, those peers all counted as one: the 101st of them anywhere on the server was
closed 4429 (``too many connections for this user``), and the sessions they created
shared one user's quotas (sessions, stored sessions, stored bytes). An empty user id
names nobody, as an empty ``token`` is none and an empty message ``id`` is filled in.
"""

from __future__ import annotations

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = [
    pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"]),
    pytest.mark.usefixtures("server_store"),
]

# What such a client sends for the fields it leaves unset (title "" is a title).
UNSET_AS_EMPTY = {"user_id": "", "token": "", "title": ""}


async def test_empty_user_ids_count_against_no_user_and_own_nothing(msgpack: bool) -> None:
    caps = {"max_connections_per_user": 1, "max_sessions_per_user": 1}
    async with (
        run_server(**caps) as server,
        attach(server, "go-1", msgpack=msgpack, create=True, **UNSET_AS_EMPTY) as (_, first),
        attach(server, "go-2", msgpack=msgpack, create=True, **UNSET_AS_EMPTY) as (_, second),
        attach(server, "go-1", msgpack=msgpack, **UNSET_AS_EMPTY) as (peer, third),
    ):
        # Three connections and two new sessions at caps of one each: none was a user's.
        assert first["session"]["user_id"] is None
        assert second["session"]["user_id"] is None
        assert third["session"]["connections"] == 2
        assert server.user_connections.count("") == 0
        assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
        status, page = await get(server, "/api/v1/sessions")
        assert status == 200
        assert {s["id"]: s["user_id"] for s in page["sessions"]} == {"go-1": None, "go-2": None}
