"""What the browser tests of the web console share: the URLs of the console and of
the server's WebSocket, the dash the console's pager and notes write between two
numbers, and the tokens, sessions and token storage of the tests with auth on.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer

DASH = "\N{EN DASH}"  # the pager says "1 DASH 10 of 13"
SECRET = "console-test-secret-" + "x" * 32
TOKEN_KEY = "bamboo.console.token"  # where the console keeps its token (sessionStorage)


def console_url(port: int, route: str = "") -> str:
    return f"http://127.0.0.1:{port}/console{route}"


def ws_url(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def make_token(sub: str, role: str = "user", ttl: int = 600, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + ttl}, secret, "HS256")


async def make_session(
    url: str, session_id: str, user_id: str | None, title: str, **kw: Any
) -> None:
    async with await BambooClient.connect(
        url, session_id, create=True, user_id=user_id, title=title, **kw
    ):
        pass
