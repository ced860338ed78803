"""A child process that SIGKILLs itself partway through a JSONL cleanup round whose
expired sessions are deleted in batches (persistence/jsonl/deletes.py), for
tests/test_jsonl_batched_deletes.py (run as a script, not collected).

``python tests/cleanup_kill_child.py DIR POINT``: opens the store, makes the session
``live`` (user ``here``) with three acknowledged events and ``EXPIRED`` sessions
``gone-NNN`` (user ``gone``) with two events each, prints ``ready``, then runs a
cleanup round and dies at POINT: ``renamed`` (at the first sync of the sessions
directory: a batch's tombstones renamed, not yet synced), ``files`` (the renames
synced, before the batch's other files go), ``tombstones`` (before the first
tombstone goes), ``second`` (at the second batch's sync of the sessions directory).
Before dying it prints the ids whose checkpoints are tombstones by then, one line:
``renamed ID ID ...``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import deletes
from bamboo_session.persistence.jsonl.layout import TOMBSTONE_SUFFIX
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

EXPIRED = 300  # more than a batch (deletes.DELETES_PER_BATCH)


def die_saying_what_is_renamed(sessions: Path) -> None:
    renamed = sorted(
        p.name[: -len(TOMBSTONE_SUFFIX)] for p in sessions.glob("*" + TOMBSTONE_SUFFIX)
    )
    print("renamed " + " ".join(renamed), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


async def main(base: str, point: str) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(base, durability="fsync"))
    sessions = storage.layout.sessions
    await storage.create_session(Session.new("live", user_id="here"))
    for i in range(3):
        await storage.append_event("live", AgentEvent.token(f"live{i}"))

    async def one(session_id: str) -> None:
        await storage.create_session(Session.new(session_id, user_id="gone"))
        await storage.append_events(
            session_id, [(AgentEvent.token("a"), None), (AgentEvent.token("b"), None)]
        )
        await storage.update_session_state(session_id, SessionState.EXPIRED)

    await asyncio.gather(*(one(f"gone-{i:03d}") for i in range(EXPIRED)))
    print("ready", flush=True)
    syncs = {"sessions": 0}
    real_sync, real_finish, real_unlink = (
        deletes.fsync_dir,
        deletes.remove_files,
        deletes.unlink_quietly,
    )

    def fsync_dir(path: Path) -> None:
        if Path(path) == sessions:
            syncs["sessions"] += 1
            if point == "renamed" or (point == "second" and syncs["sessions"] == 2):
                die_saying_what_is_renamed(sessions)
        real_sync(path)

    def remove_files(layout: Any, session_ids: list[str]) -> Any:
        if point == "files":
            die_saying_what_is_renamed(sessions)
        return real_finish(layout, session_ids)

    def unlink_quietly(path: Path) -> bool:
        if point == "tombstones" and path.name.endswith(TOMBSTONE_SUFFIX):
            die_saying_what_is_renamed(sessions)
        return real_unlink(path)

    deletes.fsync_dir = fsync_dir  # type: ignore[assignment]
    deletes.remove_files = remove_files  # type: ignore[assignment]
    deletes.unlink_quietly = unlink_quietly  # type: ignore[assignment]
    await storage.cleanup_expired_sessions()
    print("not killed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
