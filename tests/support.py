"""Shared helpers of the integration tests: a real server on an ephemeral loopback port
(``run_server``), a thin raw WebSocket peer that speaks frames as dicts, and the modules
of the JavaScript client (``client_modules``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConcurrencyError, ConnectionClosed

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.protocol.client.tasks import stopped
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig

RECV_TIMEOUT = 5.0
# A hello's welcome comes after the store's writes (a create, presence): on a loaded
# machine whose disk stalls, the suite's Redis (appendfsync always) can hold them for
# seconds. The tests wait for the welcome, not for its speed; a hung hello still fails.
WELCOME_TIMEOUT = 20.0
CLIENT_DIR = Path(__file__).resolve().parent.parent / "server" / "web" / "client"
# A static import or re-export of a sibling module (`import { … } from "./x.js";`,
# `export { … } from "./x.js";`). A JSDoc type's `import("./x.js")` loads nothing.
_SIBLING_IMPORT = re.compile(r'^(?:import|export) [^;]*? from "\./([^"/]+)";', re.M | re.S)
# The store of every run_server that names none (tests/server_backends.py sets it).
default_store: str | None = None


@contextlib.asynccontextmanager
async def run_server(
    data_dir: str | Path | None = None, **overrides: Any
) -> AsyncIterator[BambooServer]:
    """A started server on 127.0.0.1 and a free port, stopped on exit; its store is
    ``overrides["store"]``, else ``default_store``, else JSONL in ``data_dir``."""
    if default_store is not None:
        overrides.setdefault("store", default_store)
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bamboo-test-"))
        # Tests pipeline thousands of frames on one connection: the frame-rate limit is
        # off unless a test sets it (tests/test_limits.py does).
        config = ServerConfig(
            host="127.0.0.1", port=0, data_dir=str(data_dir), log_format="console", rate_limit=0
        ).replace(**overrides)
        server = BambooServer(config)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def stream_url(server: BambooServer, session_id: str | None = None) -> str:
    base = f"ws://127.0.0.1:{server.port}/api/v1/stream"
    return base if session_id is None else f"{base}/{session_id}"


class Peer:
    """A raw protocol peer: sends dict frames, receives dict frames (JSON or msgpack)."""

    def __init__(self, ws: ClientConnection, msgpack: bool = False) -> None:
        self.ws = ws
        self.msgpack = msgpack

    async def send(self, frame: dict[str, Any]) -> None:
        if self.msgpack:
            await self.ws.send(msgspec.msgpack.encode(frame))
        else:
            await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.msgpack:
            assert isinstance(data, bytes), "msgpack frames are binary"
            decoded: dict[str, Any] = msgspec.msgpack.decode(data)
        else:
            assert isinstance(data, str), "JSON frames are text"
            decoded = json.loads(data)
        return decoded

    async def recv_type(self, frame_type: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The next frame of ``frame_type``, skipping others (presence, events...)."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == frame_type:
                return frame

    async def request(self, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv_type(reply_type)

    async def closed(
        self, timeout: float = RECV_TIMEOUT
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Reads until the server closes; the close code and the frames read meanwhile."""
        frames = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                frames.append(await self.recv(timeout))
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code, frames

    async def close(self) -> None:
        await close_reading(self.ws)


async def close_reading(ws: ClientConnection) -> None:
    """Closes ``ws``, reading (and dropping) what still comes until the server's close
    frame. A peer that left more than 16 frames unread (websockets' ``max_queue``) has
    stopped reading its socket, so it would not see that frame and would wait out its
    close timeout (2 s) before hanging up: what a closing client that reads on is spared.
    The server's side is as before: the peer's close frame goes out first."""

    async def drop_the_rest() -> None:
        # ConcurrencyError: a task of the test still reads; the close goes as before.
        with contextlib.suppress(ConnectionClosed, ConcurrencyError):
            while True:
                await ws.recv()

    reading = asyncio.ensure_future(drop_the_rest())
    try:
        await ws.close()
    finally:
        await stopped(reading)


@contextlib.asynccontextmanager
async def attach(
    server: BambooServer,
    session_id: str | None = None,
    *,
    msgpack: bool = False,
    headers: dict[str, str] | None = None,
    local_addr: tuple[str, int] | None = None,
    **hello: Any,
) -> AsyncIterator[tuple[Peer, dict[str, Any]]]:
    """A peer that has sent ``hello`` and read ``welcome`` (from ``local_addr``, e.g.
    another loopback address, 127.0.0.2, for a peer the server counts apart)."""
    async with open_peer(
        server, session_id, msgpack=msgpack, headers=headers, local_addr=local_addr
    ) as peer:
        await peer.send({"type": "hello", **hello})
        welcome = await peer.recv(WELCOME_TIMEOUT)
        assert welcome["type"] == "welcome", welcome
        yield peer, welcome


@contextlib.asynccontextmanager
async def open_peer(
    server: BambooServer,
    session_id: str | None = None,
    *,
    msgpack: bool = False,
    headers: dict[str, str] | None = None,
    local_addr: tuple[str, int] | None = None,
) -> AsyncIterator[Peer]:
    subprotocols = ["bamboo.v1.msgpack"] if msgpack else ["bamboo.v1"]
    async with connect(
        stream_url(server, session_id),
        subprotocols=subprotocols,  # type: ignore[arg-type]
        additional_headers=headers,
        compression=None,
        open_timeout=5,
        close_timeout=2,
        local_addr=local_addr,
    ) as ws:
        try:
            yield Peer(ws, msgpack)
        finally:
            await close_reading(ws)


def http_get(
    server: BambooServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    """A blocking GET (run it in a thread): status, body and Content-Type."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), error.headers.get("Content-Type", "")


async def get(
    server: BambooServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """GET ``path``: status and the decoded JSON body (or the text for non-JSON)."""
    status, body, content_type = await asyncio.to_thread(http_get, server, path, headers)
    if content_type.startswith("application/json"):
        return status, json.loads(body)
    return status, body.decode()


NOBODY = 65534  # the uid and gid that ``unprivileged`` runs a child as


def unprivileged() -> list[str]:
    """The command prefix that runs a child as a user whom file modes bind: nothing
    when not root; else setpriv to ``nobody`` (skips without it). Its files must be
    where that user reaches (``tempfile.mkdtemp`` in /tmp, owned by it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv to drop root (apt-get install util-linux)")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def token(content: str) -> dict[str, Any]:
    return {"type": "token", "content": content}


def client_modules() -> set[str]:
    """The files of server/web/client/ that a page loads when it imports the client's
    entry, ``bamboo.js``: the entry and every module its static imports reach."""
    found: set[str] = set()
    todo = ["bamboo.js"]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(_SIBLING_IMPORT.findall((CLIENT_DIR / name).read_text()))
    return found


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Storage]:
    """The store at ``url``, opened with no cleanup task, closed at the block's end."""
    store = await open_storage(url, cleanup_interval=None)
    try:
        yield store
    finally:
        await store.close()
