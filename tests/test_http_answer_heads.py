"""server/answer_heads.py: every answer on the WebSocket port, whatever writes it, says
``Server: bamboo-session`` (no version: websockets' own named Python's and its own) and
``X-Content-Type-Options: nosniff``, each once: JSON answers and their errors, the text
endpoints, refusals of a head as it is read, a web asset, a streamed history's head,
a HEAD's, and the upgrade's 101."""

from __future__ import annotations

import asyncio
import base64
import os

from tests.support import attach, run_server


async def _head_lines(port: int, request: bytes) -> list[str]:
    """The header lines of the answer to ``request``, sent as it is on a connection of
    its own: its status line first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.transport.abort()
    return head.decode("latin-1").split("\r\n")[:-2]


def _get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def _upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = (
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    )
    return _get(path, extra=extra)


REQUESTS = {
    "healthz": (_get("/healthz"), 200),
    "readyz": (_get("/readyz"), 200),
    "metrics": (_get("/metrics"), 200),
    "stats (JSON)": (_get("/api/v1/stats"), 200),
    "listing (JSON)": (_get("/api/v1/sessions"), 200),
    "events (JSON)": (_get("/api/v1/sessions/heads/events"), 200),
    "history page (JSON)": (_get("/api/v1/sessions/heads?limit=5"), 200),
    "whole history (streamed)": (_get("/api/v1/sessions/heads"), 200),
    "HEAD": (_get("/api/v1/sessions/heads", "HEAD"), 200),
    "404": (_get("/nowhere"), 404),
    "bad parameter": (_get("/api/v1/sessions?limit=x"), 400),
    "405": (_get("/healthz", "POST"), 405),
    "426": (_get("/api/v1/stream/heads"), 426),
    "refused as read (431)": (_get("/healthz", extra="X-Long: " + "a" * 9000 + "\r\n"), 431),
    "refused as read (400)": (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad\r\n\r\n", 400),
    "web asset": (_get("/client/bamboo.js"), 200),
    "redirect": (_get("/"), 302),
    "upgrade elsewhere": (_upgrade("/api/v1/elsewhere"), 404),
    "upgrade (101)": (_upgrade("/api/v1/stream/heads"), 101),
}


async def test_every_answer_names_the_server_without_versions_and_says_nosniff() -> None:
    async with run_server() as server:
        async with attach(server, "heads", create=True) as (peer, _):
            message = {"role": "user", "content": "<script>alert(1)</script>"}
            await peer.request({"type": "message", "id": 1, "message": message}, "ack")
        for name, (request, status) in REQUESTS.items():
            lines = await _head_lines(server.port, request)
            assert lines[0].split(" ")[1] == str(status), (name, lines[0])
            assert _values(lines, "Server") == ["bamboo-session"], (name, lines)
            assert _values(lines, "X-Content-Type-Options") == ["nosniff"], (name, lines)


def _values(lines: list[str], name: str) -> list[str]:
    """Every value of header ``name`` among an answer's ``lines``."""
    fields = (line.partition(":") for line in lines[1:])
    return [value.strip() for field, _, value in fields if field.lower() == name.lower()]
