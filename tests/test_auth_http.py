"""Auth over HTTP, on a real server: the authorization matrix of a session's metadata
and events (401 before 404, no session data in a refusal, health and metrics open),
and a listing that shows only the caller's sessions unless an admin asks."""

from __future__ import annotations

from typing import Any

from tests.auth_support import BAD_TOKENS, SECRET, alice_session, bearer, make_token
from tests.support import attach, get, run_server

# -- over HTTP ---------------------------------------------------------------------------


async def test_http_authorization_matrix() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        async with attach(server, token=make_token("bob")) as (_, welcome):
            bob_sid = welcome["session"]["id"]
        expectations: dict[str, tuple[str | None, int]] = {
            "owner": (make_token("alice"), 200),
            "owner scoped to it": (make_token("alice", sid=sid), 200),
            "owner as agent scoped to it": (make_token("alice", role="agent", sid=sid), 200),
            "admin": (make_token("root", role="admin"), 200),
            "admin scoped to it": (make_token("root", role="admin", sid=sid), 200),
            "other user": (make_token("bob"), 403),
            "other user as agent scoped to it": (make_token("bob", role="agent", sid=sid), 403),
            "agent scoped elsewhere": (make_token("bot", role="agent", sid=bob_sid), 403),
            "admin scoped elsewhere": (make_token("root", role="admin", sid=bob_sid), 403),
            "no token": (None, 401),
            **{name: (bad, 401) for name, bad in BAD_TOKENS.items()},
        }
        for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/events"):
            for name, (token, expected) in expectations.items():
                status, body = await get(server, path, bearer(token) if token else None)
                assert status == expected, (path, name, status, body)
                if expected == 200:
                    assert "events" in body or body["metadata"]["id"] == sid
                else:
                    assert set(body) == {"error"}, body  # no session data in a refusal
        # 401 comes before 404: a missing session tells an anonymous caller nothing
        assert (await get(server, "/api/v1/sessions/nope"))[0] == 401
        assert (await get(server, "/api/v1/sessions/nope", bearer(make_token("bob"))))[0] == 404
        # health and metrics stay open for orchestrators
        assert (await get(server, "/healthz"))[0] == 200
        assert (await get(server, "/metrics"))[0] == 200


async def test_a_session_of_nobody_is_read_by_admins_alone() -> None:
    """An agent scoped to a session with no ``user_id`` is refused as its user would
    be; an admin, scoped to that session or to none, reads it."""
    async with run_server(auth_secret=SECRET) as server:
        await server.manager.create_session(None, session_id="orphan")
        expectations = {
            "agent scoped to it": (make_token("bot", role="agent", sid="orphan"), 403),
            "user scoped to it": (make_token("bot", sid="orphan"), 403),
            "admin scoped to it": (make_token("root", role="admin", sid="orphan"), 200),
            "admin": (make_token("root", role="admin"), 200),
        }
        for path in ("/api/v1/sessions/orphan", "/api/v1/sessions/orphan/events"):
            for name, (token, expected) in expectations.items():
                status, body = await get(server, path, bearer(token))
                assert status == expected, (path, name, status, body)
                if expected == 403:
                    assert set(body) == {"error"}, body


async def test_listing_shows_only_the_callers_sessions_unless_admin() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        async with attach(server, token=make_token("bob")) as (_, welcome):
            bob_sid = welcome["session"]["id"]

        async def listed(token: str | None, query: str = "") -> tuple[int, Any]:
            return await get(server, f"/api/v1/sessions{query}", bearer(token) if token else None)

        status, body = await listed(make_token("alice"))
        assert status == 200 and [s["id"] for s in body["sessions"]] == [sid]
        status, body = await listed(make_token("alice"), "?user_id=alice")
        assert status == 200 and body["total"] == 1
        assert (await listed(make_token("alice"), "?user_id=bob"))[0] == 403
        status, body = await listed(make_token("root", role="admin"))
        assert status == 200 and {s["id"] for s in body["sessions"]} == {sid, bob_sid}
        status, body = await listed(make_token("root", role="admin"), "?user_id=bob")
        assert [s["id"] for s in body["sessions"]] == [bob_sid]
        assert (await listed(make_token("bot", role="agent", sid=sid)))[0] == 403
        assert (await listed(None))[0] == 401
        assert (await listed(BAD_TOKENS["alg none"]))[0] == 401
        assert (await listed(BAD_TOKENS["expired"]))[0] == 401


async def test_a_token_scoped_to_one_session_learns_nothing_of_others() -> None:
    """A token with ``sid`` is refused any other session's read before the store is
    asked, whether that session exists or not: 404 for a missing id and 403 for an
    existing one told a capability for one session which other ids exist (a WebSocket
    already refused it 4403 before any look-up)."""
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        async with attach(server, token=make_token("bob")) as (_, welcome):
            bob_sid = welcome["session"]["id"]
        for token in (make_token("alice", sid=sid), make_token("root", role="admin", sid=sid)):
            answers = set()
            for other in (bob_sid, "no-such-session"):
                for path in (f"/api/v1/sessions/{other}", f"/api/v1/sessions/{other}/events"):
                    status, body = await get(server, path, bearer(token))
                    answers.add((status, body["error"]["message"]))
            assert answers == {(403, "this token is scoped to another session")}, answers
            # Its own session is still read, and a malformed id is still no endpoint.
            assert (await get(server, f"/api/v1/sessions/{sid}/events", bearer(token)))[0] == 200
            assert (await get(server, "/api/v1/sessions/..", bearer(token)))[0] == 404
