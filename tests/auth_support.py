"""What the auth tests share (tests/test_auth*.py, and others that run a server with
auth): the secret, tokens signed with it (``make_token``), tokens that must be refused
(``BAD_TOKENS``), an Authorization header, the outcome of a hello, and a session of
alice's."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.app import BambooServer
from tests.support import attach, open_peer

SECRET = "s" * 32
OTHER_SECRET = "o" * 32


def make_token(sub: str = "alice", *, secret: str = SECRET, ttl: float = 60, **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def unsigned_token(**payload: Any) -> str:
    """A token with ``alg: none`` and an empty signature: must never be accepted."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": "alice", "exp": int(time.time() + 60), "role": "admin", **payload}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Made at collection: each but "expired" lives an hour, so that it is refused for what
# its name says however late its test runs (a test under four processes can start
# minutes after collection).
LATER = 3600
BAD_TOKENS = {
    "expired": make_token(ttl=-30),
    "wrong signature": make_token(secret=OTHER_SECRET, ttl=LATER),
    "alg none": unsigned_token(exp=int(time.time() + LATER)),
    "HS512": jwt.encode({"sub": "alice", "exp": int(time.time() + LATER)}, SECRET * 2, "HS512"),
    "no exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    "no sub": jwt.encode({"exp": int(time.time() + LATER)}, SECRET, algorithm="HS256"),
    "unknown role": make_token(role="root", ttl=LATER),
    "bad sid": make_token(sid="../x", ttl=LATER),
    "garbage": "not.a.token",
    "empty": "",
}


async def hello_outcome(
    server: BambooServer,
    session_id: str | None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **hello: Any,
) -> tuple[int | None, list[dict[str, Any]]]:
    """The close code (None when welcomed) and the frames received before it."""
    async with open_peer(server, session_id, headers=headers) as peer:
        frame: dict[str, Any] = {"type": "hello", **hello}
        if token is not None:
            frame["token"] = token
        await peer.send(frame)
        try:
            first = await peer.recv()
        except ConnectionClosed:
            return peer.ws.close_code, []
        if first["type"] == "welcome":
            return None, [first]
        code, rest = await peer.closed()
        return code, [first, *rest]


async def alice_session(server: BambooServer) -> str:
    async with attach(server, token=make_token("alice"), title="alice's") as (peer, welcome):
        await peer.request(
            {"type": "event", "id": 1, "event": {"type": "token", "content": "x"}}, "ack"
        )
        assert welcome["session"]["user_id"] == "alice"
        session_id: str = welcome["session"]["id"]
        return session_id
