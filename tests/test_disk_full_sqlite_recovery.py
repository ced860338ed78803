"""A server on an SQLite store whose disk (a real, small tmpfs) fills takes appends
again once space comes back, by itself, and loses none it acknowledged.

Reproducer of what bench/disk_full_soak.py found: publishers fill the disk, a quarter
of it is freed, and the store stays full. While full, SQLite's WAL took the whole disk
(the passive checkpoint every second cannot fold it into the database file, which has
no room to grow); once space is freed, the next appends grow the WAL into it before a
checkpoint can use it, and from then on neither the WAL nor the database can grow:
every append fails, /readyz stays 503, a restart does not help.

Needs root (it mounts a tmpfs); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.disk_full_support import event_frame, fill_until_refused, mounted_tmpfs
from tests.server_process import ServerProcess
from tests.support import http_get

DISK = "8m"
FREED = 2 << 20  # a quarter of the disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", DISK) as mount_point:
        yield mount_point


async def publish_at_pace(url: str, name: str, seconds: float = 20.0) -> list[bool]:
    """Rounds of 8 keyed events every half second for ``seconds``, what failed sent
    again, reconnecting when closed (a full disk fails the attach too, 1011): whether
    each round was acked whole."""
    rounds: list[bool] = []
    keys = [f"{name}-{index}" for index in range(100_000)]
    acked: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with connect(url, open_timeout=10, close_timeout=1) as ws:
                await ws.send(json.dumps({"type": "hello", "create": True}))
                await ws.recv()
                while time.monotonic() < deadline:
                    pending = [key for key in keys if key not in acked][:8]
                    for key in pending:
                        await ws.send(event_frame(key, 100))
                    replies = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in pending]
                    acked.update(r["id"] for r in replies if r["type"] == "ack")
                    rounds.append(all(r["type"] == "ack" for r in replies))
                    await asyncio.sleep(0.5)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1011, closed
            rounds.append(False)
            await asyncio.sleep(0.5)
    return rounds


async def test_sqlite_store_takes_appends_again_once_disk_space_returns(
    small_disk: Path, tmp_path: Path
) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * FREED)
    store = f"sqlite://{small_disk}/data/store.db"
    server = ServerProcess(tmp_path / "unused", tmp_path / "server.log", "--store", store)
    await server.start_in_loop()
    try:
        acked: dict[str, int] = {}
        fills = [fill_until_refused(server.url(f"s{n}"), f"s{n}", acked) for n in range(4)]
        await asyncio.wait_for(asyncio.gather(*fills), 60)
        # The publishers go on at a modest pace (8 events each every half second,
        # sending again what failed); 3 s in, an operator frees a quarter of the disk.
        # Their appends should succeed again, and go on succeeding.
        paced = asyncio.gather(*(publish_at_pace(server.url(f"s{n}"), f"s{n}-a") for n in range(4)))
        await asyncio.sleep(3)
        ballast.unlink()
        rounds = await asyncio.wait_for(paced, 60)
        for replies in rounds:
            assert replies[-5:] == [True] * 5, (
                f"rounds of 8 appends fully acked after space returned: {replies}; free bytes "
                f"{os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize}, files "
                f"{sorted((p.name, p.stat().st_size) for p in (small_disk / 'data').iterdir())}"
            )
        status, _, _ = await asyncio.to_thread(http_get, server, "/readyz")  # type: ignore[arg-type]
        assert status == 200
        for key, seq in acked.items():
            session_id = key.rsplit("-", 1)[0]
            path = f"/api/v1/sessions/{session_id}/events?after_seq={seq - 1}&limit=1"
            status, body, _ = await asyncio.to_thread(http_get, server, path)  # type: ignore[arg-type]
            assert status == 200 and json.loads(body)["events"][0]["event"]["content"].startswith(
                key + "."
            )
    finally:
        with contextlib.suppress(Exception):
            server.kill()
