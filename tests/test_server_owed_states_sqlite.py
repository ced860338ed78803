"""The state a parked session owes an SQLite store that refuses writes, past
``--disconnect-retention``, reaches it once the store takes writes again
(server/owed_states.py; Redis: tests/test_server_owed_states.py).

The outage is real: another process holds the file's write lock (``BEGIN IMMEDIATE``),
so every write of the server's waits for it 10 s (persistence/sqlite/lock_wait.py) and
fails, while reads go on (WAL mode). The detach's park fails, then the look's save before the
actor leaves memory: some 20 s. (A full disk does not hold: the fold after a failed
write frees the WAL's space, and the next small write gets it.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.instances import eventually
from tests.parent_death import ending_with_this_process
from tests.support import attach, get, run_server

HOLD_THE_WRITE_LOCK = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


async def test_a_session_parked_while_sqlite_refuses_writes_is_listed_disconnected_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    # A look no sooner than the retention's end: the actor leaves memory after one save.
    options = {"disconnect_retention": 1.0, "idle_timeout": 5.0}
    async with run_server(store=f"sqlite://{path}", **options) as server:
        async with attach(server, "locked-out", create=True):
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                HOLD_THE_WRITE_LOCK,
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=ending_with_this_process(),
            )
            assert holder.stdin is not None and holder.stdout is not None
            assert await holder.stdout.readline() == b"locked\n"  # before the peer leaves
        try:
            await eventually(lambda: server.manager.live_actor("locked-out") is None, timeout=90)
            assert len(server.manager.owed_states) == 1
            _, body = await get(server, "/api/v1/sessions?state=active")
            assert [s["id"] for s in body["sessions"]] == ["locked-out"]  # what it owes
        finally:
            holder.stdin.write(b"\n")
            holder.stdin.close()
            await asyncio.wait_for(holder.wait(), 30)

        async def listed_disconnected() -> bool:
            _, body = await get(server, "/api/v1/sessions?state=disconnected")
            return [s["id"] for s in body["sessions"]] == ["locked-out"]

        await eventually(listed_disconnected, timeout=30)
        await eventually(lambda: len(server.manager.owed_states) == 0)
