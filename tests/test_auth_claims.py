"""Claims a signed token may carry that no store could hold or no clock could read: a
``sub`` holding a lone UTF-16 surrogate (JSON's ``"\\ud800"``, which PyJWT's reader
lets through) and a NumericDate beyond a double's range. Each is a bad token, refused
as every bad token is (close 4401 with no frame before it, HTTP 401), before any
session is created: they were a 1011 or an HTTP 500, and a traceback in the log. A
NumericDate of another JSON type that PyJWT reads as a number anyway (``exp: true``):
a bad token too, not an expired one. And optional claims sent as ``null``, as issuers
that write unset fields send them: none."""

from __future__ import annotations

import asyncio
from typing import Any

from bamboo_session.server.auth import Principal, Role
from tests.auth_support import SECRET, hello_outcome, make_token
from tests.support import open_peer, run_server
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


def wrongly_typed_dates() -> dict[str, str]:
    """PyJWT reads these with int(): ``exp: true`` is 1, and was "token expired", as
    were ``false`` and a string of seconds in the past; ``nbf`` and ``iat`` alike pass
    its checks as 1 or 0, in the past. Made when a test runs, as unreadable() is."""
    return {
        "exp true": make_token(exp=True),
        "exp false": make_token(exp=False),
        "exp a string of seconds in the past": make_token(exp="1"),
        "nbf true": make_token(nbf=True),
        "nbf false": make_token(nbf=False),
        "iat true": make_token(iat=True),
        "iat false": make_token(iat=False),
    }


async def refusal(server: Any, token: str) -> tuple[tuple[int | None, str, list[Any]], bytes]:
    """What a hello under ``token`` is told (close code, reason, frames before it), and
    the body of the HTTP answer to a listing under it, once its status is seen as 401."""
    async with open_peer(server, "new-one") as peer:
        await peer.send({"type": "hello", "token": token, "create": True})
        code, frames = await peer.closed()
        closed = (code, peer.ws.close_reason, frames)
    path = "/api/v1/sessions"
    status, challenge, body = await asyncio.to_thread(
        status_and_challenge, server.port, path, token
    )
    assert (status, challenge) == (401, 'Bearer realm="bamboo"'), (status, body)
    return closed, body


async def test_a_date_claim_of_another_json_type_is_an_invalid_token_not_an_expired_one() -> None:
    async with run_server(auth_secret=SECRET) as server:
        for name, token in wrongly_typed_dates().items():
            closed, body = await refusal(server, token)
            assert closed == (4401, "invalid token", []), (name, closed)
            assert body == b'{"error":{"code":"unauthorized","message":"invalid token"}}', name
        # A NumericDate in the past is still told apart: the client needs a new token.
        closed, body = await refusal(server, make_token(ttl=-30))
        assert closed == (4401, "token expired", [])
        assert body == b'{"error":{"code":"unauthorized","message":"token expired"}}'
        assert (await server.manager.list_sessions()).sessions == []


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
