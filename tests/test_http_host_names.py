"""The host in ``Host`` (or in an absolute-form target's authority) is what RFC 3986
3.2.2 allows, or the request is 400 whatever the host checks allow (auth on, or
``--allowed-hosts *``, let any host through): a name of letters, digits,
``-._~!$&'()*+,;=`` and ``%XX``; an IPv6 address in brackets, without a zone id; no
userinfo (``user@``, RFC 9110 4.2.4). ``GET http://user@127.0.0.1/`` was served, and so
was ``Host: a b``, ``a/b``, ``[v1.x]``; ``Host: [::1%x]`` passed as loopback. An
absolute-form target without a host (``http:///healthz``) is 400 too (RFC 9110 4.2.1):
it was served as an empty ``Host``, which passes (RFC 9112 3.2)."""

from __future__ import annotations

import pytest

from bamboo_session.server import http_refusals as words
from bamboo_session.server.origins import BAD_HOST, BAD_IP_LITERAL, USERINFO
from tests.support import run_server
from tests.test_handshake_bytes import answer_of
from tests.test_http_served_as import host_request, status_and_error, upgrade_request

SECRET = "s" * 32
REFUSED = [
    ("user@127.0.0.1", USERINFO),
    ("user:pass@127.0.0.1:80", USERINFO),
    ("@127.0.0.1", USERINFO),
    ("a b", BAD_HOST),
    ("a/b", BAD_HOST),  # not in absolute-form: a slash ends the authority there
    ("a?b", BAD_HOST),
    ("a#b", BAD_HOST),
    ("a\\b", BAD_HOST),
    ("a%zzb", BAD_HOST),
    ("a%4", BAD_HOST),
    ('a"b', BAD_HOST),
    ("a<b>", BAD_HOST),
    ("é.example", BAD_HOST),
    (":80", BAD_HOST),  # a port without a host
    ("[fe80::1%25eth0]", BAD_IP_LITERAL),  # a zone id means something on the client only
    ("[::1%x]", BAD_IP_LITERAL),
    ("[v1.x]", BAD_IP_LITERAL),  # IPvFuture: no such version is defined
    ("[127.0.0.1]", BAD_IP_LITERAL),
    ("[bamboo.internal]:80", BAD_IP_LITERAL),
    ("[]", BAD_IP_LITERAL),
]
SERVED = [
    "bamboo.internal",
    "bamboo.internal.",  # a trailing dot: the root of DNS, a valid reg-name
    "Bamboo-1.internal:8000",
    "a%41b.internal",
    "a_b~c!$&'()*+,;=.internal",
    "[::ffff:127.0.0.1]",
    "[2001:DB8::1]:80",
]


def with_host_line(host: str) -> bytes:
    return f"Host: {host}\r\n".encode("latin-1")


@pytest.mark.parametrize("guards", [{"auth_secret": SECRET}, {"allowed_hosts": ("*",)}])
async def test_a_host_rfc_3986_does_not_allow_is_400(guards: dict[str, object]) -> None:
    async with run_server(**guards) as server:  # type: ignore[arg-type]
        for host, message in REFUSED:
            expected = (400, {"code": "bad_request", "message": message})
            for absolute in (False, True):
                if absolute and (not host.isascii() or " " in host or "/" in host):
                    continue  # a target with a space, or not ASCII: refused as such
                if absolute and ("?" in host or "#" in host):
                    continue  # the authority of a target ends there
                answer = await answer_of(server.port, host_request(host, absolute))
                assert status_and_error(answer) == expected, (host, absolute, answer)
            request = upgrade_request(host=with_host_line(host))
            assert status_and_error(await answer_of(server.port, request)) == expected, host
        for host in SERVED:
            for absolute in (False, True):
                answer = await answer_of(server.port, host_request(host, absolute))
                assert status_and_error(answer) == (200, None), (host, absolute, answer)


async def test_userinfo_in_an_absolute_form_upgrade_is_400() -> None:
    async with run_server(auth_secret=SECRET) as server:
        request = upgrade_request().replace(
            b"GET /api/v1/stream/", b"GET ws://user@127.0.0.1/api/v1/stream/"
        )
        answer = await answer_of(server.port, request)
    assert status_and_error(answer) == (400, {"code": "bad_request", "message": USERINFO})


async def test_an_absolute_form_target_with_an_empty_host_is_400() -> None:
    async with run_server(allowed_hosts=("*",)) as server:
        request = b"GET http:///healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        answer = await answer_of(server.port, request)
        expected = (400, {"code": "bad_request", "message": words.EMPTY_TARGET_HOST})
        assert status_and_error(answer) == expected, answer
        # An empty Host header is another thing: the target has no authority (RFC 9112 3.2).
        answer = await answer_of(server.port, b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\n")
        assert status_and_error(answer) == (200, None), answer


async def test_an_empty_host_header_is_no_host_the_default_checks_allow() -> None:
    """docs/protocol.md, Origins and hosts: an empty Host is not 400, but without auth
    it names no allowed host (403); in absolute-form the target's host stands in."""
    async with run_server() as server:
        answer = await answer_of(server.port, b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\n")
        refused = (403, {"code": "forbidden", "message": "host not allowed"})
        assert status_and_error(answer) == refused, answer
        request = b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost:\r\n\r\n"
        answer = await answer_of(server.port, request)
        assert status_and_error(answer) == (200, None), answer
