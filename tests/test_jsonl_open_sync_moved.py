"""A JSONL store whose ``sessions/`` moved to another file system between its open and
the open's sync of the file system (persistence/jsonl/fs_sync.py ``sync_file_system``
returns False): that sync stands for nothing known of the checkpoints, so the store
falls back to syncing each checkpoint file on its own before its first write over a
slot (checkpointer.py ``_take_found_on_disk``, checkpoint.py ``update``), says so in
its log, and loses nothing: every acknowledged event is there after a ``kill -9`` and
a reopen, and the states its checkpoints wrote after the move too.

For real: a store process of its own, whose ``sessions/`` is a symlink (as an operator
may make it, fs_sync.py) that it points, right after its open returns, at a copy on
/dev/shm (tmpfs, another device than the test's temp dir). That comes before the
sync's first step for certain, not by timing: the open starts the sync's task last and
returns with no await after it, so the task first runs at the loop's next turn, after
the move (the log line asserted below would be missing otherwise). Killed with SIGKILL
by pid; the test reopens the store through the symlink, now pointing at the copy."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import Popen

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.jsonl.fs_sync import device_to_sync
from bamboo_session.protocol.models import SessionState
from tests.parent_death import ending_with_this_process
from tests.server_process import ROOT
from tests.test_jsonl_first_checkpoints import (
    as_done,
    own_syncs_before_first_writes,
    stored_active,
)

SESSIONS = 4
EVENTS = 40

MOVE_AND_WRITE = f"""
import asyncio, os, shutil, sys
from pathlib import Path
from bamboo_session.persistence.jsonl import JsonlStorage
from bamboo_session.persistence.jsonl.config import JsonlStorageConfig
from bamboo_session.protocol.models import AgentEvent, SessionState

async def main(base, elsewhere):
    print("pid", os.getpid(), flush=True)
    config = JsonlStorageConfig(base, durability="fsync", checkpoint_interval=0.05)
    storage = await JsonlStorage.open(config)
    # The operator's move, before the loop's next turn (the open's sync has not begun).
    sessions = Path(base) / "sessions"
    shutil.copytree(sessions.resolve(), elsewhere)
    Path(base, "sessions.moving").symlink_to(elsewhere)
    os.replace(Path(base, "sessions.moving"), sessions)
    # Written lazily, by the rounds of checkpoints: first, so that every checkpoint
    # written after the move holds them (a session is dirty from then on only).
    for number in range({SESSIONS}):
        await storage.update_session_state(f"s{{number}}", SessionState.IDLE)
    for number in range({EVENTS}):
        session_id = f"s{{number % {SESSIONS}}}"
        appended = await storage.append_event(session_id, AgentEvent.token(f"t{{number}}"))
        print("acked", session_id, appended.seq, flush=True)
    print("written", flush=True)
    await asyncio.Event().wait()  # killed here

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``condition()`` holds; the child's exit or 60 s end the wait (a guard
    against a hang, not a timing)."""
    assert callable(condition)
    deadline = time.monotonic() + 60
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached; the store process said: {log.read_text()}")
        time.sleep(0.02)


def store_process(base: Path, moved: Path, out: Path, err: Path, trace: Path | None) -> Popen:
    """The store's process (under strace, its calls to ``trace``, if given)."""
    command = [sys.executable, "-c", MOVE_AND_WRITE, str(base), str(moved)]
    if trace is not None:
        calls = "trace=fsync,fdatasync,syncfs,pwrite64"
        command = ["strace", "-f", "-y", "-e", calls, "-o", str(trace), *command]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            preexec_fn=ending_with_this_process(None),
        )


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "strace"])
async def test_sessions_moved_before_the_open_sync_each_checkpoint_synced_and_nothing_lost(
    tmp_path: Path, other_file_system: Path, traced: bool
) -> None:
    """``strace``: the calls show each checkpoint file synced on its own before its
    first write (skipped where strace is missing or not allowed)."""
    if traced and shutil.which("strace") is None:
        pytest.skip("strace is not installed: apt-get install strace")
    base, here, moved = (
        tmp_path / "store",
        tmp_path / "sessions-here",
        other_file_system / "sessions",
    )
    base.mkdir()
    here.mkdir()
    (base / "sessions").symlink_to(here)
    if device_to_sync(here) is None:
        pytest.skip("no syncfs that stands for each file here: no open sync to fall back from")
    url = f"jsonl://{base}?durability=fsync"
    await stored_active(url, SESSIONS)

    out, err, trace = tmp_path / "child.out", tmp_path / "child.err", tmp_path / "trace"
    child = store_process(base, moved, out, err, trace if traced else None)
    try:
        try:
            await asyncio.to_thread(
                wait_for, lambda: "written" in out.read_text(), "the writes", child, err
            )
        except AssertionError:
            if traced and "ptrace" in err.read_text():
                pytest.skip(f"strace cannot trace here: {err.read_text().strip()}")
            raise

        def rewritten_since_the_move() -> bool:
            # Each checkpoint written over a slot since the copy (its state idle): the
            # first writes after the sync that stood for nothing, each file synced first.
            return all(
                (moved / f"s{n}.json").read_bytes() != (here / f"s{n}.json").read_bytes()
                for n in range(SESSIONS)
            )

        await asyncio.to_thread(
            wait_for, rewritten_since_the_move, "the checkpoints after the move", child, err
        )
    finally:
        store_pid = [int(line.split()[1]) for line in lines_of(out) if line.startswith("pid ")]
        for pid in store_pid or [child.pid]:  # (strace ends with its tracee)
            if child.poll() is None:
                os.kill(pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL, err.read_text()  # (strace: its tracee's)
    if traced:
        calls = as_done(trace.read_text().splitlines())
        assert not [call for call in calls if call.split()[1].startswith("syncfs(")]
        expected = {str(n): True for n in range(SESSIONS)}
        assert own_syncs_before_first_writes(calls) == expected, "\n".join(calls)

    said = err.read_text()
    assert "moved to another file system since the open: not synced as a whole" in said
    assert "each checkpoint file is synced on its own before its first write" in said
    acked: dict[str, list[int]] = {f"s{n}": [] for n in range(SESSIONS)}
    for line in lines_of(out):
        if line.startswith("acked "):
            _, session_id, seq = line.split()
            acked[session_id].append(int(seq))
    assert sum(len(seqs) for seqs in acked.values()) == EVENTS

    assert (base / "sessions").resolve() == moved.resolve()
    storage = await open_storage(url)
    try:
        for session_id, seqs in acked.items():
            stored = await storage.read_events(session_id)
            assert [event.seq for event in stored] == seqs
            metadata = await storage.get_metadata(session_id)
            assert metadata is not None and metadata.state == SessionState.IDLE
    finally:
        await storage.close()
