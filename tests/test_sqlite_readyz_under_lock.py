"""``/readyz`` of a real ``serve`` on a SQLite store whose write lock another process
holds (Python's sqlite3 left in ``BEGIN IMMEDIATE``, as the ``sqlite3`` shell would be)
past the writer's lock wait (10 s).

The append waiting for the lock fails (``internal``, nothing stored), and ``/readyz``
stays 503 for as long as the other process holds the lock: its probe takes the write
lock as an append would. Once the lock goes, ``/readyz`` is 200 again and the next
append is acknowledged. Before, the probe only wrote a file in the store's directory,
which the lock does not stop: ``/readyz`` said ``ready`` the moment the append failed,
lock still held, until another append had waited 5 s for it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from bamboo_session.persistence.sqlite.lock_wait import LOCK_WAIT
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.stalled_disks_support import HOLD_WRITE_LOCK, holding
from tests.test_sqlite_stop_under_lock import acked, event, peer

HANG_GUARD = 60.0  # a wait still going then is taken for one that hangs
LOOKS = 4  # /readyz asked this many times, a probe's interval (1 s) apart, while held
# What the server logs at error level here: the failed write, once per outage, and the
# append it failed.
EXPECTED_ERRORS = ("a write to", "append failed")


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def test_readyz_stays_503_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sessions.db"
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--store", f"sqlite://{db}")
    await server.start_in_loop()
    try:
        publisher = await peer(server, create=True)
        await acked(publisher, 1)
        async with holding(HOLD_WRITE_LOCK, db):
            await publisher.send(event(2))
            started = time.monotonic()
            answer = json.loads(await asyncio.wait_for(publisher.recv(), HANG_GUARD))
            waited = time.monotonic() - started
            looks = []
            for _ in range(LOOKS):
                looks.append(await asyncio.to_thread(readyz, server.port))
                await asyncio.sleep(1.1)
        assert answer["type"] == "error" and answer["id"] == 2, answer
        assert "database is locked" in answer["message"], answer
        assert waited > LOCK_WAIT - 1, waited
        assert [status for status, _ in looks] == [503] * LOOKS, looks
        deadline = time.monotonic() + HANG_GUARD
        while (status := await asyncio.to_thread(readyz, server.port)) != (200, "ready\n"):
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        assert (await acked(publisher, 3))["seq"] == 2
        await publisher.close()
    finally:
        assert await asyncio.to_thread(server.stop, HANG_GUARD) == 0
    assert_no_tracebacks(server.log_records(), EXPECTED_ERRORS)
