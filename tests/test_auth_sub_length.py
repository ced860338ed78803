"""A token's ``sub`` is held to ``--max-user-id-length``, as a ``hello.user_id`` is: a
longer one is a bad token, refused as every bad token is (close 4401 with no frame
before it; HTTP 401 with ``WWW-Authenticate`` on every endpoint that takes a token),
before any session is created, read or counted."""

from __future__ import annotations

import asyncio
import http.client

import pytest

from bamboo_session.server.auth import Authenticator, Unauthorized
from tests.auth_support import SECRET, bearer, hello_outcome, make_token
from tests.support import run_server

LIMIT = 8
FITS, TOO_LONG = "u" * LIMIT, "u" * (LIMIT + 1)


def test_verify_refuses_a_sub_over_the_limit() -> None:
    assert Authenticator(SECRET, max_sub_length=LIMIT).verify(make_token(FITS)).sub == FITS
    with pytest.raises(Unauthorized, match=r"^invalid token$"):
        Authenticator(SECRET, max_sub_length=LIMIT).verify(make_token(TOO_LONG))
    # Without a limit the authenticator takes any length: the server always gives it
    # its --max-user-id-length (256 by default).
    assert Authenticator(SECRET).verify(make_token("u" * 1000)).sub == "u" * 1000


async def test_a_hello_with_a_too_long_sub_is_closed_4401_and_creates_nothing() -> None:
    async with run_server(auth_secret=SECRET, max_user_id_length=LIMIT) as server:
        code, frames = await hello_outcome(server, "mine", make_token(FITS), create=True)
        assert code is None and frames[0]["session"]["user_id"] == FITS
        for admin in (False, True):
            role = {"role": "admin"} if admin else {}
            token = make_token(TOO_LONG, **role)
            # Before: a new session under it was a bad_request about a "user_id" the
            # client never sent (close 1008), and an existing one let it in.
            for session_id, create in (("new-one", True), (None, True), ("mine", False)):
                outcome = await hello_outcome(server, session_id, token, create=create)
                assert outcome == (4401, []), (admin, session_id, outcome)
            outcome = await hello_outcome(server, "mine", headers=bearer(token))
            assert outcome == (4401, []), admin
        listed = await server.manager.list_sessions()
        assert [session.id for session in listed.sessions] == ["mine"]


def status_and_challenge(port: int, path: str, token: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=bearer(token))
        answer = connection.getresponse()
        return answer.status, answer.getheader("WWW-Authenticate"), answer.read()
    finally:
        connection.close()


async def test_every_http_endpoint_refuses_a_too_long_sub_with_401() -> None:
    async with run_server(auth_secret=SECRET, max_user_id_length=LIMIT) as server:
        await hello_outcome(server, "mine", make_token(FITS), create=True)
        paths = ["/api/v1/sessions", "/api/v1/sessions/mine", "/api/v1/sessions/mine/events"]
        for path in paths:
            good = make_token(FITS)
            fits = await asyncio.to_thread(status_and_challenge, server.port, path, good)
            assert fits[0] == 200, (path, fits)
            for token in (make_token(TOO_LONG), make_token(TOO_LONG, role="admin")):
                status, challenge, body = await asyncio.to_thread(
                    status_and_challenge, server.port, path, token
                )
                assert status == 401, (path, status, body)
                assert challenge == 'Bearer realm="bamboo"'
                assert body == b'{"error":{"code":"unauthorized","message":"invalid token"}}'
