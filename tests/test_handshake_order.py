"""The order in which a ``hello``'s refusals are checked (docs/protocol.md, "When the
handshake fails"): a hello at fault in two ways gets the close of the check that comes
first. Token (4401), connections per user (4429), a token scoped to another session
(4403); for a creation, room (1013), then the creation rate (4429), then the user's
quota (4403), then the store's room (1013); then another user's session (4403), before a
closed one (4409) or a missing one (4404)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt

from bamboo_session.persistence import open_storage
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.instances import eventually
from tests.support import attach, get, open_peer, run_server
from tests.test_server_expired_create import expire

SECRET = "handshake-order-secret-of-32-bytes"


def make_token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


async def refusal(
    server: BambooServer, session_id: str | None, **hello: Any
) -> tuple[int | None, str]:
    """The close code and reason of a ``hello`` the server refuses (no frame before)."""
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello", **hello})
        code, frames = await peer.closed()
        assert frames == []
        return code, peer.ws.close_reason


async def test_the_token_and_the_users_connections_come_before_the_session() -> None:
    async with run_server(auth_secret=SECRET, max_connections_per_user=1) as server:
        alice = make_token("alice")
        async with attach(server, "closed-one", token=alice, create=True) as (peer, _):
            await peer.request({"type": "state", "state": "closed"}, "ack")
        # Its connection's place is given back once the server has seen it close.
        await eventually(lambda: server.user_connections.count("alice") == 0)
        async with attach(server, "alices", token=alice, create=True):
            # alice is at her one connection now.
            assert await refusal(server, "missing") == (4401, "token required")
            scoped_elsewhere = make_token("alice", sid="other")
            assert await refusal(server, "missing", token=scoped_elsewhere) == (
                4429,
                "too many connections for this user",
            )
            assert await refusal(server, "closed-one", token=alice) == (
                4429,
                "too many connections for this user",
            )
            bob_elsewhere = make_token("bob", sid="other")
            assert await refusal(server, "missing", token=bob_elsewhere) == (
                4403,
                "this token is scoped to another session",
            )
            bob = make_token("bob")
            assert await refusal(server, "closed-one", token=bob) == (4403, "not your session")
            assert await refusal(server, "missing", token=bob) == (4404, "session not found")


async def test_a_creation_meets_room_then_rate_then_quota() -> None:
    # One creation spends the whole burst: the rate gives the next one a token only
    # 100 s later, far past this test, however slow the machine.
    quotas = {"session_create_rate": 0.01, "session_create_burst": 1, "max_sessions_per_user": 1}
    async with run_server(max_sessions=1, **quotas) as server:
        async with attach(server, "first", user_id="u", create=True):
            # Held open, its session cannot be evicted: no room for a second.
            assert await refusal(server, "second", user_id="u", create=True) == (
                1013,
                "server at its session limit",
            )
    async with run_server(**quotas) as server:
        async with attach(server, "first", user_id="u", create=True):
            pass
        assert await refusal(server, "second", user_id="u", create=True) == (
            4429,
            "creating sessions too fast",
        )


@contextlib.asynccontextmanager
async def server_on_a_store_for_one_session(
    data_dir: Path, **settings: Any
) -> AsyncIterator[BambooServer]:
    """A server on a JSONL store its embedder opened with room for one session."""
    store = await open_storage(f"jsonl://{data_dir}", max_sessions=1, cleanup_interval=None)
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(data_dir), rate_limit=0)
    try:
        server = BambooServer(config.replace(**settings), store)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    finally:
        await store.close()


async def test_a_creation_the_store_has_no_room_for_is_1013_after_the_quota(
    tmp_path: Path,
) -> None:
    async with server_on_a_store_for_one_session(tmp_path, max_sessions_per_user=1) as server:
        async with attach(server, "first", user_id="u", create=True):
            pass
        # u is at its quota too: that refusal comes first.
        assert await refusal(server, "second", user_id="u", create=True) == (
            4403,
            "too many sessions for this user",
        )
        for session_id in ("second", None):  # None: /api/v1/stream, a new session
            assert await refusal(server, session_id, user_id="v", create=True) == (
                1013,
                "the store is full",
            )
        assert (await get(server, "/api/v1/sessions/second"))[0] == 404
        # A session that replaces an expired one takes its place, no more room.
        await expire(server, "first")
        async with attach(server, "first", user_id="v", create=True) as (_, welcome):
            assert welcome["session"]["user_id"] == "v"
