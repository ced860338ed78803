"""A child process that SIGKILLs itself at a chosen step of a JSONL append, cut, delete
or replacement, for tests/test_user_bytes_crash.py (run as a script, not collected).

``python tests/kill_points_child.py DIR POINT DURABILITY``: opens the store, makes sure
user ``u``'s sessions ``a`` and ``b`` exist and appends three events to each (printing
``ready``), then starts the step and dies at POINT: ``wal-write`` (an append's lines are
in its log, its WAL record not written), ``cut`` and ``cut-after`` (a write that failed
partway, RLIMIT_FSIZE: before and after its lines are cut back out), ``delete-start``
(the deletion in the WAL, the checkpoint not yet renamed), ``delete-renamed`` (the
tombstone there, its directory not synced), ``delete-files`` (before the other files
go), ``delete-tombstone`` (before the tombstone goes), ``replace-delete`` and
``replace-install`` (a create replacing the expired session ``e``: before the old
files go, before the new checkpoint takes their place). The kill comes from a hook
on the store's own function at that step: the files are real, the crash is.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import deletes, lifecycle, logfiles, wal
from bamboo_session.protocol.models import AgentEvent, Session

USER_CAP = 10_000_000


def die(*_args: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(base: str, point: str, durability: str) -> None:
    mode = "os" if durability == "os" else "fsync"
    config = JsonlStorageConfig(base, max_user_bytes=USER_CAP, durability=mode)
    storage = await JsonlStorage.open(config)
    for session_id in ("a", "b"):
        if await storage.get_metadata(session_id) is None:
            await storage.create_session(Session.new(session_id, user_id="u"))
        for i in range(3):
            await storage.append_event(session_id, AgentEvent.token(f"{session_id}{i}" * 10))
    if point.startswith("replace") and await storage.get_metadata("e") is None:
        await storage.create_session(Session.new("e", user_id="u", ttl=1))
        await storage.append_event("e", AgentEvent.token("e" * 500))
    print("ready", flush=True)
    if point == "wal-write":
        wal.SegmentFile.write = die  # type: ignore[assignment]
        await storage.append_event("a", AgentEvent.token("x" * 100))
    elif point in ("cut", "cut-after"):
        cut_back = logfiles.LogFiles.cut_back

        def cut_then_die(files: logfiles.LogFiles, group: Any) -> None:
            if point == "cut-after":
                cut_back(files, group)
            die()

        logfiles.LogFiles.cut_back = cut_then_die  # type: ignore[method-assign]
        meta = await storage.get_metadata("a")
        assert meta is not None
        size = meta.stored_bytes  # the log's size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, resource.RLIM_INFINITY))
        await storage.append_event("a", AgentEvent.token("x" * 5000))
    elif point.startswith("delete"):
        _arm_delete(point)
        await storage.delete_session("a")
    else:
        await asyncio.sleep(1.1)  # "e" expires
        if point == "replace-delete":
            deletes.rename_to_tombstones = die  # type: ignore[assignment]
        else:
            lifecycle.install_replacement = die  # type: ignore[assignment]
        await storage.create_session(Session.new("e", user_id="u"), replace_expired=True)
    print("not killed", flush=True)


def _arm_delete(point: str) -> None:
    if point == "delete-start":
        deletes.rename_to_tombstones = die  # type: ignore[assignment]
    elif point == "delete-renamed":
        deletes.fsync_dir = die  # type: ignore[assignment]
    elif point == "delete-files":
        deletes.remove_files = die  # type: ignore[assignment]
    else:
        unlink = deletes.unlink_quietly

        def unlink_unless_tombstone(path: Path) -> bool:
            if path.name.endswith(".deleted"):
                die()
            return unlink(path)

        deletes.unlink_quietly = unlink_unless_tombstone  # type: ignore[assignment]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
