"""Raw HTTP exchanges with a real server, for the tests of its HTTP answers
(tests/test_server_http*.py, test_origins.py, test_cors.py and others): ``raw_http``
sends a request as it is and parses the answer, ``error_of`` checks an error's JSON
body and returns it. ``http_server_of`` serves a handler of the standard library's
http.server on a loopback port (static pages, stand-ins for other servers)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def http_server_of(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serves ``handler`` on a loopback port, a thread a request; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def raw_http(server: Any, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``request`` as it is; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def error_of(headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert headers["content-type"] == "application/json", headers
    assert int(headers["content-length"]) == len(body)
    error: dict[str, str] = json.loads(body)["error"]
    return error
