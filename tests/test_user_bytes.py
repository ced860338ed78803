"""The bound on what one user's sessions store together (``--max-user-bytes``) against a
real server and real WebSocket peers: a user who fills a session, closes it and opens
another is refused ``too_large`` once the sessions together reach the bound (closed
ones count), with a message naming the user's bound, counted in /metrics; deleting a
session frees room; the sums are rebuilt after a restart; another user, and a session
without one, are not held back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.support import Peer, attach, get, run_server, token

USER_CAP = 8192
PAYLOAD = "x" * 300  # a log line of about 400 bytes: twenty or so fit under USER_CAP


async def append(peer: Peer, n: int) -> dict[str, Any]:
    """Publish token ``n``, keyed ``k<n>``; the ack or the error."""
    await peer.send({"type": "event", "id": n, "event": token(f"{n}:{PAYLOAD}"), "key": f"k{n}"})
    while True:
        reply = await peer.recv()
        if reply["type"] in ("ack", "error") and reply.get("id") == n:
            return reply


async def fill(peer: Peer) -> int:
    """Append until the server refuses one for the user's bound; how many it took."""
    n = 0
    while n < 100:  # far past the bound: a server that never refuses fails the test
        reply = await append(peer, n + 1)
        if reply["type"] == "error":
            assert reply["code"] == "too_large", reply
            assert "sessions of user 'u'" in reply["message"], reply
            assert str(USER_CAP) in reply["message"], reply
            return n
        n += 1
        assert reply == {"type": "ack", "id": n, "seq": n}
    raise AssertionError(f"{n} appends, and no too_large")


async def close(peer: Peer) -> None:
    await peer.send({"type": "state", "id": "c", "state": "closed"})
    await peer.recv_type("closed")


async def metric(server: Any, name: str) -> int:
    text = (await get(server, "/metrics"))[1]
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None
    return int(float(found[1]))


async def test_closed_sessions_count_until_deleted() -> None:
    async with run_server(max_user_bytes=USER_CAP) as server:
        async with attach(server, "a", create=True, user_id="u") as (peer, _):
            first = await fill(peer)
            assert 10 <= first < USER_CAP // 300
            await close(peer)
        # A new session of the user: the closed one still holds its bytes.
        async with attach(server, "b", create=True, user_id="u") as (peer, _):
            assert await fill(peer) == 0
            # Another user, and a session without one, are not held back.
            async with (
                attach(server, "v", create=True, user_id="v") as (other, _),
                attach(server, "anon", create=True) as (anonymous, _),
            ):
                for n in range(1, 31):
                    assert (await append(anonymous, n))["type"] == "ack"
                    if n <= 20:
                        assert (await append(other, n))["type"] == "ack"
            assert await metric(server, "bamboo_appends_over_user_cap_total") == 2
            assert await metric(server, "bamboo_appends_over_session_cap_total") == 0
            assert await get(server, "/readyz") == (200, "ready\n")
            # Deleting the closed session frees its bytes: as much room as before.
            await server.manager.delete_session("a")
            assert await fill(peer) == first


async def test_the_users_sums_are_rebuilt_after_a_restart(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_user_bytes=USER_CAP) as server,
        attach(server, "a", create=True, user_id="u") as (peer, _),
    ):
        first = await fill(peer)
        await close(peer)
    async with run_server(tmp_path, max_user_bytes=USER_CAP) as server:
        async with attach(server, "b", create=True, user_id="u") as (peer, _):
            assert await fill(peer) == 0
            await server.manager.delete_session("a")
            assert await fill(peer) == first
    # Without a bound (0), the user's sessions take appends again.
    async with (
        run_server(tmp_path, max_user_bytes=0) as server,
        attach(server, "b", user_id="u") as (peer, _),
    ):
        assert (await append(peer, first + 1))["type"] == "ack"
