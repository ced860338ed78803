"""What the server logs while an SQLite store's disk (a real, small tmpfs) stays full:
the outage told once, not a line every second or a line per refused peer.

Reproducers of what bench/disk_full_soak.py found (docs/protocol.md, Readiness: "The
JSONL and SQLite stores log their side once an outage too", the later failures at
debug level): on main, the SQLite store's checkpointer logs a warning
(`checkpoint of … failed: database or disk is full`) every second for as long as the
disk is full (86,400 lines a day), and every `hello` refused because its attach could
not be written logs a warning of its own (`storage failed`, command `Attach`): a
thousand viewers reconnecting write a thousand lines.

Needs root (it mounts a tmpfs); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.disk_full_support import fill_until_refused, mounted_tmpfs
from tests.server_process import ServerProcess

HELD = 12.0  # seconds the disk stays full
REFUSED_HELLOS = 40


@pytest.fixture
async def full_disk_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        store = f"sqlite://{disk}/data/store.db"
        server = ServerProcess(tmp_path / "unused", tmp_path / "server.log", "--store", store)
        await server.start_in_loop()
        try:
            await asyncio.wait_for(fill_until_refused(server.url("filler"), "f", {}), 60)
            yield server
        finally:
            server.kill()


def warnings_and_errors(server: ServerProcess, containing: str) -> list[dict[str, object]]:
    return [
        record
        for record in server.log_records()
        if record.get("level") in ("warning", "error") and containing in str(record.get("event"))
    ]


async def test_a_full_disk_logs_its_failed_checkpoints_once(
    full_disk_server: ServerProcess,
) -> None:
    await asyncio.sleep(HELD)
    checkpoints = warnings_and_errors(full_disk_server, "checkpoint of")
    assert len(checkpoints) <= 2, (
        f"{len(checkpoints)} checkpoint failures logged in {HELD:.0f} s of a full disk: "
        f"{json.dumps(checkpoints[:3])}"
    )


async def test_hellos_refused_by_a_full_disk_are_not_logged_one_line_each(
    full_disk_server: ServerProcess,
) -> None:
    closes = []
    for _ in range(REFUSED_HELLOS):
        try:
            async with connect(full_disk_server.url("filler"), open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "hello", "last_seq": 0}))
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as closed:
            closes.append(closed.rcvd.code if closed.rcvd else 1006)
    assert closes == [1011] * REFUSED_HELLOS  # what the peers see: documented
    failed = warnings_and_errors(full_disk_server, "storage failed")
    assert len(failed) <= 2, (
        f"{len(failed)} lines for {REFUSED_HELLOS} refused hellos: {json.dumps(failed[:2])}"
    )
