"""The baseline every bench script compares Bamboo to: the thinnest websockets relay.

A connection to ``/pub/{name}`` is a producer; a connection to ``/sub/{name}`` a
subscriber. Every frame a producer sends is forwarded, as the same bytes and without
being decoded, to every subscriber of the same name. No sessions, no persistence, no
acknowledgements, no replay: what is left is the cost of websockets itself (handshake,
framing, one receive and one send per frame), the floor under any relay built on it.

Run: ``python -m bench.baseline_relay --port 0`` prints
"baseline-relay listening on HOST:PORT" on stderr once started; SIGTERM closes every
connection with 1012 and exits, like the Bamboo server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.process_setup import raise_open_file_limit

from .common import run

SERVICE_RESTART = 1012


class Relay:
    def __init__(self) -> None:
        self.subscribers: dict[str, set[ServerConnection]] = {}

    async def handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        _, role, name = [*path.split("/", 2), "", ""][:3]
        if role == "sub":
            await self._subscribe(ws, name)
        elif role == "pub":
            await self._publish(ws, name)
        else:
            await ws.close(1008, "path must be /pub/{name} or /sub/{name}")

    async def _subscribe(self, ws: ServerConnection, name: str) -> None:
        subscribers = self.subscribers.setdefault(name, set())
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
            if not subscribers:
                self.subscribers.pop(name, None)

    async def _publish(self, ws: ServerConnection, name: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                data = await ws.recv(decode=False)
                for subscriber in tuple(self.subscribers.get(name, ())):
                    with contextlib.suppress(ConnectionClosed):
                        await subscriber.send(data, text=True)


async def main(host: str, port: int) -> None:
    relay = Relay()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The same websockets limits as Bamboo's defaults (server/config.py).
    async with serve(
        relay.handle,
        host,
        port,
        compression=None,
        max_size=1024 * 1024,
        max_queue=4,
        write_limit=256 * 1024,
        ping_interval=20.0,
        ping_timeout=20.0,
        close_timeout=5.0,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"baseline-relay listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        await stop.wait()
        server.close(close_connections=True, code=SERVICE_RESTART, reason="server restarting")
        await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    raise_open_file_limit()
    run(main(args.host, args.port))
