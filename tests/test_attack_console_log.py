"""The server's console log (``--log-format console``, what ``auto`` picks when stderr is
a terminal) writes a string field as it is, and some are a peer's: a close frame's
reason, logged with ``connection closed``. An escape sequence there reached the
operator's terminal, which acted on it (retitled its window, cleared its screen). Its
control characters are now written as escapes (server/terminal_text.py). The JSON log
escaped C0 controls itself, but wrote DEL, C1 controls (``\x9b``, a CSI of its own)
and bidi controls as they were, to whoever reads the file on a terminal: escaped too.

A real ``serve`` in a child process, its stderr in a file (no colours: the only escape
codes in it would be the peer's), and a real WebSocket peer."""

from __future__ import annotations

import json
from pathlib import Path

from websockets.asyncio.client import connect

from tests.instances import eventually
from tests.server_process import ServerProcess

REASON = "bye\x1b]0;owned\x07\x1b[2J\x1b[H\x9b1m"


async def test_a_peers_close_reason_reaches_the_console_log_as_escapes(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", log_path, "--log-format", "console")
    await server.start_in_loop()
    try:
        async with connect(server.url("logged")) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.close(code=3000, reason=REASON)
        await eventually(lambda: b"connection closed" in log_path.read_bytes())
    finally:
        server.stop()
    log = log_path.read_bytes().decode()
    line = next(line for line in log.splitlines() if "connection closed" in line)
    assert "bye\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\x9b1m" in line, line
    assert [c for c in log if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0] == []


async def test_a_peers_close_reason_reaches_the_json_log_as_escapes(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", log_path, "--log-format", "json")
    await server.start_in_loop()
    try:
        async with connect(server.url("logged")) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.close(code=3000, reason=REASON + "\u202e")
        await eventually(lambda: b"connection closed" in log_path.read_bytes())
    finally:
        server.stop()
    log = log_path.read_bytes().decode()
    line = next(line for line in log.splitlines() if "connection closed" in line)
    assert json.loads(line)["close_reason"] == REASON + "\u202e"  # the same data
    shown = [c for c in log if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert shown + [c for c in log if 0x202A <= ord(c) <= 0x202E] == []
