"""An ``Authorization`` header that is no bearer credential, on a real server with auth:
refused as no token is (HTTP 401 with its challenge, close 4401), with a message that
says what is wrong with the header rather than that a token is required.

RFC 9110 11.4 separates the scheme from its credentials by spaces only (``1*SP``), and
RFC 6750 2.1 has ``Bearer`` then the token: ``Bearer<TAB>token``, a token without its
scheme and another scheme (``Basic …``) carry no bearer token (docs/protocol.md, Tokens).
"""

from __future__ import annotations

from tests.auth_support import SECRET, make_token
from tests.http_support import error_of, raw_http
from tests.support import open_peer, run_server

NOT_BEARER = "the Authorization header is not Bearer <token> (RFC 6750 2.1)"


def listing_with(authorization: str | None) -> bytes:
    header = b"" if authorization is None else b"Authorization: " + authorization.encode() + b"\r\n"
    return b"GET /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"


async def test_http_says_the_header_is_no_bearer_credential() -> None:
    token = make_token("alice")
    async with run_server(auth_secret=SECRET) as server:
        for authorization in (f"Bearer\t{token}", token, "Basic YWxpY2U6c2VjcmV0", "Bearer"):
            status, headers, body = await raw_http(server, listing_with(authorization))
            assert status == 401, (authorization, status, body)
            assert headers["www-authenticate"] == 'Bearer realm="bamboo"'
            assert error_of(headers, body)["message"] == NOT_BEARER, authorization
        status, headers, body = await raw_http(server, listing_with(None))
        assert (status, error_of(headers, body)["message"]) == (401, "token required")
        # Spaces, one or more, do separate them; the scheme's case does not matter.
        for authorization in (f"Bearer  {token}", f"bearer {token}"):
            status, _, body = await raw_http(server, listing_with(authorization))
            assert status == 200, (authorization, status, body)


async def test_a_hello_without_a_token_is_told_the_upgrades_header_is_no_bearer_credential() -> (
    None
):
    token = make_token("alice")
    async with run_server(auth_secret=SECRET) as server:
        headers = {"Authorization": f"Bearer\t{token}"}
        async with open_peer(server, headers=headers) as peer:
            await peer.send({"type": "hello", "token": ""})
            code, frames = await peer.closed()
            assert (code, frames, peer.ws.close_reason) == (4401, [], NOT_BEARER)
        # A token in the hello wins over the header, whatever the header holds.
        async with open_peer(server, headers=headers) as peer:
            await peer.send({"type": "hello", "token": token})
            assert (await peer.recv())["type"] == "welcome"
