"""What the browser tests of the web console share: the URLs of the console and of
the server's WebSocket, and the dash the console's pager and notes write between two
numbers.
"""

from __future__ import annotations

from bamboo_session.server.app import BambooServer

DASH = "\N{EN DASH}"  # the pager says "1 DASH 10 of 13"


def console_url(port: int, route: str = "") -> str:
    return f"http://127.0.0.1:{port}/console{route}"


def ws_url(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"
