"""Claims a signed token may carry that no store could hold or no clock could read: a
``sub`` holding a lone UTF-16 surrogate (JSON's ``"\\ud800"``, which PyJWT's reader
lets through) and a NumericDate beyond a double's range. Each is a bad token, refused
as every bad token is (close 4401 with no frame before it, HTTP 401), before any
session is created: they were a 1011 or an HTTP 500, and a traceback in the log. And
optional claims sent as ``null``, as issuers that write unset fields send them: none."""

from __future__ import annotations

import asyncio

from bamboo_session.server.auth import Principal, Role
from tests.support import run_server
from tests.test_auth import SECRET, hello_outcome, make_token
from tests.test_auth_sub_length import status_and_challenge


def unreadable() -> dict[str, str]:
    """Made when a test runs, not when the module is collected: each lives 60 s, and
    under four processes a test can start minutes after collection ("token expired")."""
    return {
        "sub with a lone surrogate": make_token("\ud800"),
        "sub ending in a lone low surrogate": make_token("alice\udfff"),
        "exp of 400 digits": make_token(exp=10**400),
        "nbf of 400 digits below zero": make_token(nbf=-(10**400)),
    }


async def test_a_hello_under_an_unreadable_claim_is_closed_4401_and_creates_nothing() -> None:
    async with run_server(auth_secret=SECRET) as server:  # the JSONL store
        for name, token in unreadable().items():
            for session_id in ("new-one", None):
                outcome = await hello_outcome(server, session_id, token, create=True)
                assert outcome == (4401, []), (name, session_id, outcome)
        listed = await server.manager.list_sessions()
        assert listed.sessions == []
        code, frames = await hello_outcome(server, "new-one", make_token(), create=True)
        assert code is None and frames[0]["session"]["user_id"] == "alice"


async def test_every_http_endpoint_refuses_an_unreadable_claim_with_401() -> None:
    async with run_server(auth_secret=SECRET) as server:
        await hello_outcome(server, "mine", make_token(), create=True)
        paths = ["/api/v1/sessions", "/api/v1/sessions/mine", "/api/v1/sessions/mine/events"]
        for path in paths:
            for name, token in unreadable().items():
                status, challenge, body = await asyncio.to_thread(
                    status_and_challenge, server.port, path, token
                )
                assert status == 401, (path, name, status, body)
                assert challenge == 'Bearer realm="bamboo"'
                assert body == b'{"error":{"code":"unauthorized","message":"invalid token"}}'


async def test_a_null_role_or_sid_is_left_out() -> None:
    # A null sid was none already; a null role was a bad token (4401).
    async with run_server(auth_secret=SECRET) as server:
        token = make_token(role=None, sid=None)
        code, frames = await hello_outcome(server, "mine", token, create=True)
        assert code is None and frames[0]["session"]["user_id"] == "alice"
        assert server.access.authenticate_request(f"Bearer {token}") == Principal("alice")
        assert Principal("alice").role is Role.USER
        # Another user's session stays out of reach: null is a user, not more.
        other = make_token("bob", role=None)
        assert await hello_outcome(server, "mine", other) == (4403, [])
