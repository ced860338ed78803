"""``--max-stored-sessions-per-user``: the sessions one user keeps in the store, closed
and expired ones too until they are deleted or cleaned up. Without it one user could
create and close sessions (closed ones are outside ``--max-sessions-per-user``) until
the store-wide ``--max-stored-sessions`` refused everyone. Real servers, raw
WebSocket clients under auth, and a restart: the count is the store's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from bamboo_session.server.settings import load_config
from tests.auth_support import SECRET, bearer, make_token
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach, open_peer, run_server

CAP = 3
FULL = (4403, "too many stored sessions for this user")


def first_reply(
    server: ServerProcess, session_id: str | None, user: str, *, create: bool = True
) -> tuple[int, str] | None:
    """None when ``user``'s hello is welcomed (the session is then closed by its
    peer), else the close it gets instead."""
    with connect(server.url(session_id), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "create": create, "token": make_token(user)}))
        try:
            welcome = json.loads(ws.recv(timeout=10))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, closed
            return closed.rcvd.code, closed.rcvd.reason
        assert welcome["type"] == "welcome", welcome
        ws.send(json.dumps({"type": "state", "id": 1, "state": "closed"}))
        while json.loads(ws.recv(timeout=10)).get("type") != "ack":
            pass
        return None


def test_closed_sessions_count_and_only_against_their_user(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        "--auth-secret",
        SECRET,
        "--max-stored-sessions-per-user",
        str(CAP),
    )
    server.start()
    try:
        for i in range(CAP):
            assert first_reply(server, f"alice-{i}", "alice") is None  # made, then closed
        # Every one of them is closed: the per-user live cap would let alice go on.
        assert first_reply(server, "alice-more", "alice") == FULL
        assert first_reply(server, None, "alice") == FULL  # a session the server names
        assert first_reply(server, "alice-more", "alice", create=False) == (
            4404,
            "session not found",
        )  # the refusal created nothing
        assert first_reply(server, "bob-0", "bob") is None  # another user has room
        server.stop()
        server.start()  # the count is what the store holds, not what one process made
        assert first_reply(server, "after-restart", "alice") == FULL
        assert first_reply(server, "bob-1", "bob") is None
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


async def refused(
    server: BambooServer, session_id: str, headers: dict[str, str]
) -> tuple[int, str]:
    async with open_peer(server, session_id, headers=headers) as peer:
        await peer.send({"type": "hello", "create": True})
        code, frames = await peer.closed()
        assert code is not None and frames == [], frames
        return code, peer.ws.close_reason or ""


@pytest.mark.parametrize("closed", [False, True], ids=["not-closed", "closed"])
async def test_replacing_ones_own_expired_session_at_the_cap(closed: bool) -> None:
    """An expired session counts until it is cleaned up; one that its owner's creation
    replaces goes with it, closed or not, so that creation keeps the count as it was."""
    alice = bearer(make_token("alice"))
    async with run_server(
        auth_secret=SECRET, max_stored_sessions_per_user=1, default_ttl=1
    ) as server:
        async with attach(server, "s1", headers=alice, create=True) as (peer, old):
            if closed:
                await peer.request({"type": "state", "id": 1, "state": "closed"}, "ack")
        await asyncio.sleep(1.2)  # its TTL runs out; the cleanup runs hourly
        assert await refused(server, "s2", alice) == FULL
        async with attach(server, "s1", headers=alice, create=True) as (_, new):
            assert new["epoch"] != old["epoch"] and new["session"]["user_id"] == "alice"
        assert await refused(server, "s2", alice) == FULL  # still one kept: the new s1


def test_the_option_is_set_like_its_neighbours(tmp_path: Path) -> None:
    assert ServerConfig().max_stored_sessions_per_user == 10_000
    assert ServerConfig(max_stored_sessions_per_user=0).max_stored_sessions_per_user == 0
    with pytest.raises(ValueError, match="max_stored_sessions_per_user"):
        ServerConfig(max_stored_sessions_per_user=-1)
    env = {"BAMBOO_MAX_STORED_SESSIONS_PER_USER": "7"}
    assert ServerConfig.from_env(env).max_stored_sessions_per_user == 7
    path = tmp_path / "bamboo.toml"
    path.write_text("max_stored_sessions_per_user = 5\n")
    assert load_config({}, {}, str(path)).max_stored_sessions_per_user == 5
