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

``python tests/kill_points_child.py --forks``: the same, once per line of stdin
(``DIR POINT DURABILITY STDERR_FILE``, tab-separated), each in a child forked from this
process once its imports are done (they were most of a child's CPU, and the tests start
34 of them); each child's wait status and stdout are printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import lifecycle, logfiles, wal
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
            lifecycle.delete_session_files = die  # type: ignore[assignment]
        else:
            lifecycle.install_replacement = die  # type: ignore[assignment]
        await storage.create_session(Session.new("e", user_id="u"), replace_expired=True)
    print("not killed", flush=True)


def _arm_delete(point: str) -> None:
    if point == "delete-start":
        lifecycle.delete_session_files = die  # type: ignore[assignment]
    elif point == "delete-renamed":
        lifecycle.fsync_dir = die  # type: ignore[assignment]
    elif point == "delete-files":
        lifecycle.finish_delete = die  # type: ignore[assignment]
    else:
        unlink = lifecycle.unlink_quietly

        def unlink_unless_tombstone(path: Path) -> bool:
            if path.name.endswith(".deleted"):
                die()
            return unlink(path)

        lifecycle.unlink_quietly = unlink_unless_tombstone  # type: ignore[assignment]


def forks() -> None:
    """Runs ``main`` in a forked child per line of stdin; prints how each ended."""
    for line in sys.stdin:
        base, point, durability, stderr_file = line.rstrip("\n").split("\t")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            run_forked(write_end, stderr_file, base, point, durability)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as output:
            stdout = output.read()  # to its end: the child is gone
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        print(json.dumps({"returncode": returncode, "stdout": stdout.decode()}), flush=True)


def run_forked(stdout: int, stderr_file: str, base: str, point: str, durability: str) -> None:
    """The forked child: ``main`` with its own stdout and stderr; never returns."""
    try:
        os.dup2(stdout, 1)
        os.dup2(os.open(stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        signal.alarm(60)  # a child that hangs ends (SIGALRM), as the tests' timeout did
        asyncio.run(main(base, point, durability))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--forks"]:
        forks()
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
