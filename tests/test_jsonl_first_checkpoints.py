"""The first checkpoints after a JSONL store's open, read from the system calls of a
real open, state writes (as a park makes them) and close (``strace``; skipped where it
is missing or not allowed): the open syncs the file system once (``syncfs``), and no
checkpoint file is synced on its own before its first write over a slot, which that
sync made safe (checkpoint.py). A sync per file made the close after a park of 100,000
sessions take 34 s. That sync runs in a worker thread once the open returned
(persistence/jsonl/open_sync.py): made to start late (strace delays its entry), the
open returns before it does, and the close's writes wait for it; a checkpoint written
alone meanwhile (a session closed) syncs its own file first instead.

Whether the snapshot of a clean close is there (the slots read at the first write) or
not (``kill -9``: the open read every checkpoint, and knows its slots). And where the
one sync cannot stand for the files' (persistence/jsonl/fs_sync.py), each file is
synced before its first write, as before: a ``syncfs`` that fails (EIO, injected by
strace into the real call), a checkpoint symlinked to another file system (tmpfs,
/dev/shm); a ``sessions/`` symlinked there is synced there, at once.

Each test also reads both runs' calls as a power cut would find them: the run before
(its close wrote each checkpoint's newest slot, unsynced) and the run after the
restart. No write may leave both slots of a file unsynced at once: a power cut then
could leave neither whole (``unsynced_together``)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.persistence.jsonl.fs_sync import (
    file_system_type,
    kernel_version,
    why_not_at_once,
)
from bamboo_session.protocol.models import Session, SessionState

SESSIONS = 5

OPENED = "/bamboo-test-the-open-returned"

WRITE_AND_CLOSE = f"""
import asyncio, os, sys
from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import AgentEvent, SessionState

async def main():
    storage = await open_storage(sys.argv[1])
    os.access({OPENED!r}, os.F_OK)  # a call in the trace: the open returned
    for number in range({SESSIONS}):  # written lazily: checkpointed by the close
        await storage.update_session_state(f"s{{number}}", SessionState(sys.argv[2]))
    if sys.argv[2] != "closed":
        await storage.append_event("s0", AgentEvent.token("t"))  # through the WAL
    await storage.close()
    print("sync failed:", storage.sync_failed, file=sys.stderr)

asyncio.run(main())
"""

CHECKPOINT = r"\d+</[^>]*/s(\d)\.json>"
STORE_SYNCED = r"syncfs\(\d+</[^>]*/sessions>\)"
SNAPSHOTS = ["left by a clean close", "none: a kill"]
SYNCED_OR_RENAMED = (
    r"f(?:data)?sync\(\d+<([^>]*\.json)>\)\s+= 0|rename(?:at2?)?\(.*\"([^\"]*\.json)\""
)


async def stored_active(url: str, sessions: int = SESSIONS) -> None:
    """``sessions`` sessions ``s0``, ``s1``... made in the store, ``active``."""
    storage = await open_storage(url)
    try:
        for number in range(sessions):
            await storage.create_session(Session.new(f"s{number}", user_id="u"))  # active
    finally:
        await storage.close()


def traced(
    tmp_path: Path, url: str, inject: str = "", state: SessionState = SessionState.DISCONNECTED
) -> tuple[list[str], str]:
    """The child's system calls of interest (``-y``: each descriptor's path), and its
    stderr; ``inject``: strace's ``-e inject=`` of a failure into a real call."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: apt-get install strace")
    trace = tmp_path / "trace"
    calls = "trace=fsync,fdatasync,syncfs,pwrite64,rename,renameat,renameat2,access,faccessat2"
    child = [sys.executable, "-c", WRITE_AND_CLOSE, url, state.value]
    injected = ["-e", f"inject={inject}"] if inject else []
    run = subprocess.run(
        ["strace", "-f", "-y", "-e", calls, *injected, "-o", str(trace), *child],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    return as_done(trace.read_text().splitlines()), run.stderr


def as_done(lines: list[str]) -> list[str]:
    """strace's lines (``-f``: each led by its thread's id), a call that another
    thread's calls cut in two (``<unfinished ...>``, then ``<... call resumed>``) made
    whole again, in the place where it counts for a power cut: a write where it began
    (its bytes may reach the file from then on), any other call where it returned (a
    sync stands for nothing before that)."""
    begun: dict[str, str] = {}
    done = []
    for line in lines:
        if found := re.fullmatch(r"(\d+)\s+(.*) <unfinished \.\.\.>", line):
            begun[found[1]] = found[2]
            if found[2].startswith("pwrite64("):
                done.append(line)
        elif found := re.fullmatch(r"(\d+)\s+<\.\.\. (\w+) resumed>(.*)", line):
            call = begun.pop(found[1])
            if not call.startswith("pwrite64("):
                done.append(f"{found[1]}  {call}{found[3]}")
        else:
            done.append(line)
    return done


def unsynced_together(*runs: list[str]) -> list[str]:
    """The writes, in ``runs`` one after the other, that left both slots of a checkpoint
    file unsynced at once: a power cut then could leave neither whole. A slot is
    unsynced from its ``pwrite64`` (whole slots: the offset over the size is the slot)
    until a sync of its file, or a ``syncfs`` of the directory it is in (a file outside
    it, through a symlink, is on another file system in these tests); a file renamed
    into place was synced first (``write_atomic``)."""
    unsynced: dict[str, set[int]] = {}
    both = []
    for line in (line for run in runs for line in run):
        if found := re.search(r"syncfs\(\d+<([^>]*)>\)\s+= 0", line):
            for path, slots in unsynced.items():
                if path.startswith(found[1] + "/"):
                    slots.clear()
        elif found := re.search(SYNCED_OR_RENAMED, line):
            unsynced.pop(found[1] or found[2], None)
        elif found := re.search(r"pwrite64\(\d+<([^>]*\.json)>, .*, (\d+), (\d+)", line):
            slots = unsynced.setdefault(found[1], set())
            slots.add(int(found[3]) // int(found[2]))
            if len(slots) > 1:
                both.append(line)
    return both


def own_syncs_before_first_writes(lines: list[str]) -> dict[str, bool]:
    """For each checkpoint written: whether its file was synced on its own before."""
    synced, first_write_after_sync = set(), {}
    for line in lines:
        if found := re.search(rf"f(?:data)?sync\({CHECKPOINT}", line):
            synced.add(found[1])
        elif found := re.search(rf"pwrite64\({CHECKPOINT}", line):
            first_write_after_sync.setdefault(found[1], found[1] in synced)
    return first_write_after_sync


async def parked_after(url: str) -> int:
    storage = await open_storage(url)
    try:
        parked = await storage.list_sessions(SessionFilter(state=SessionState.DISCONNECTED))
    finally:
        await storage.close()
    return parked.total


async def killed_or_closed(
    tmp_path: Path, url: str, snapshot: str, moved: Callable[[], None] = lambda: None
) -> list[str]:
    """Sessions made (durably), ``moved`` (the operator's moves of their files, synced),
    then a run whose close writes a slot of each, unsynced (its calls, returned), and
    then that close's snapshot gone, as after a kill."""
    await stored_active(url)
    moved()
    before, _stderr = await asyncio.to_thread(traced, tmp_path, url, "", SessionState.IDLE)
    if snapshot.startswith("none"):
        (tmp_path / "store" / "index" / "snapshot.msgpack").unlink()
    return before


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
async def test_the_first_checkpoints_after_an_open_sync_no_file_of_their_own(
    tmp_path: Path, snapshot: str
) -> None:
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    before = await killed_or_closed(tmp_path, url, snapshot)

    lines, stderr = await asyncio.to_thread(traced, tmp_path, url)

    assert unsynced_together(before, lines) == []  # what a power cut could find
    assert "sync failed: False" in stderr
    syncs = [n for n, line in enumerate(lines) if re.search(STORE_SYNCED, line)]
    writes = [n for n, line in enumerate(lines) if re.search(rf"pwrite64\({CHECKPOINT}", line)]
    assert len(syncs) == 1, "\n".join(lines)
    assert len(writes) == SESSIONS and min(writes) > syncs[0], "\n".join(lines)
    assert own_syncs_before_first_writes(lines) == {str(n): False for n in range(SESSIONS)}
    assert await parked_after(url) == SESSIONS


def returned_before(lines: list[str], first: str, then: str) -> bool:
    """Whether the call ``first`` matches (its return: ``as_done``) comes before every
    one ``then`` matches, and each is there."""
    firsts = [n for n, line in enumerate(lines) if re.search(first, line)]
    thens = [n for n, line in enumerate(lines) if re.search(then, line)]
    return len(firsts) == 1 and bool(thens) and firsts[0] < min(thens)


# Its entry put off (strace), so that the open, the state writes and the close all come
# while it has not returned: what a slow disk makes of it (4.97 s after a close that
# wrote 100,000 checkpoints). Not a timing the test waits for: nothing would be written
# early if it were shorter, only no longer shown not to be.
LATE = "syncfs:delay_enter=2s"
OPEN_RETURNED = re.escape(OPENED)
FIRST_WRITES = rf"pwrite64\({CHECKPOINT}"


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
async def test_the_open_returns_before_its_sync_and_no_first_write_comes_before_it(
    tmp_path: Path, snapshot: str
) -> None:
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    before = await killed_or_closed(tmp_path, url, snapshot)

    lines, stderr = await asyncio.to_thread(traced, tmp_path, url, LATE)

    assert unsynced_together(before, lines) == []  # what a power cut could find
    assert "sync failed: False" in stderr
    assert not list((tmp_path / "store" / "wal").iterdir())  # retired by the close
    assert returned_before(lines, OPEN_RETURNED, STORE_SYNCED), "\n".join(lines)
    assert returned_before(lines, STORE_SYNCED, FIRST_WRITES), "\n".join(lines)
    assert own_syncs_before_first_writes(lines) == {str(n): False for n in range(SESSIONS)}
    assert await parked_after(url) == SESSIONS


async def test_a_checkpoint_written_alone_before_the_sync_returned_syncs_its_file(
    tmp_path: Path,
) -> None:
    """Sessions closed while the open's sync has not returned: each close's checkpoint
    is on disk when it returns, without waiting for the whole file system, so its file
    is synced on its own before its first write over a slot."""
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    before = await killed_or_closed(tmp_path, url, SNAPSHOTS[0])

    lines, stderr = await asyncio.to_thread(traced, tmp_path, url, LATE, SessionState.CLOSED)

    assert unsynced_together(before, lines) == []  # what a power cut could find
    assert "sync failed: False" in stderr
    writes = [n for n, line in enumerate(lines) if re.search(FIRST_WRITES, line)]
    synced = [n for n, line in enumerate(lines) if re.search(STORE_SYNCED, line)]
    assert len(writes) == SESSIONS and max(writes) < synced[0], "\n".join(lines)  # no wait
    assert own_syncs_before_first_writes(lines) == {str(n): True for n in range(SESSIONS)}


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
async def test_a_failed_sync_of_the_file_system_syncs_each_file_before_its_first_write(
    tmp_path: Path, snapshot: str
) -> None:
    """``syncfs`` fails (EIO: a writeback the kernel could not do, since the last look),
    once the open returned: nothing is known on disk, so each checkpoint file is synced
    before a slot of it is written over (its own sync reports its own failure, if it
    was its), and the store's syncs are distrusted as after any failed sync: every WAL
    segment is kept for the next open (the gauge ``bamboo_store_sync_failed`` 1)."""
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    before = await killed_or_closed(tmp_path, url, snapshot)

    lines, stderr = await asyncio.to_thread(traced, tmp_path, url, f"{LATE}:error=EIO")

    assert unsynced_together(before, lines) == []  # what a power cut could find
    failed = r"syncfs\(.*\(INJECTED\)"
    assert returned_before(lines, OPEN_RETURNED, failed), "\n".join(lines)
    assert returned_before(lines, failed, FIRST_WRITES), "\n".join(lines)
    assert "could not sync the store's file system" in stderr
    assert "sync failed: True" in stderr
    assert list((tmp_path / "store" / "wal").iterdir())  # kept for the next open
    assert own_syncs_before_first_writes(lines) == {str(n): True for n in range(SESSIONS)}
    assert await parked_after(url) == SESSIONS


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
async def test_a_checkpoint_on_another_file_system_is_synced_on_its_own(
    tmp_path: Path, other_file_system: Path, snapshot: str
) -> None:
    """An operator moved ``s0``'s checkpoint to another file system, a symlink in its
    place: the sync of the store's file system does not reach it."""
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    elsewhere = other_file_system / "s0.json"
    placed = tmp_path / "store" / "sessions" / "s0.json"

    def move() -> None:
        shutil.move(placed, elsewhere)
        with elsewhere.open("rb+") as moved:
            os.fsync(moved.fileno())
        placed.symlink_to(elsewhere)

    before = await killed_or_closed(tmp_path, url, snapshot, move)

    lines, _stderr = await asyncio.to_thread(traced, tmp_path, url)

    assert unsynced_together(before, lines) == []  # what a power cut could find
    expected = {str(n): n == 0 for n in range(SESSIONS)}
    assert own_syncs_before_first_writes(lines) == expected, "\n".join(lines)
    assert await parked_after(url) == SESSIONS
    assert placed.is_symlink()


async def test_a_sessions_directory_on_another_file_system_is_synced_there(
    tmp_path: Path, other_file_system: Path
) -> None:
    """``sessions/`` is a symlink to another file system: that one is synced, once."""
    base = tmp_path / "store"
    url = f"jsonl://{base}?durability=fsync"
    base.mkdir()
    (other_file_system / "sessions").mkdir()
    (base / "sessions").symlink_to(other_file_system / "sessions")
    before = await killed_or_closed(tmp_path, url, "none: a kill")

    lines, _stderr = await asyncio.to_thread(traced, tmp_path, url)

    assert unsynced_together(before, lines) == []  # what a power cut could find
    synced = [line for line in lines if re.search(STORE_SYNCED, line)]
    assert len(synced) == 1 and str(other_file_system) in synced[0], "\n".join(lines)
    assert own_syncs_before_first_writes(lines) == {str(n): False for n in range(SESSIONS)}
    assert await parked_after(url) == SESSIONS


def test_the_power_cut_reading_of_the_calls() -> None:
    """``unsynced_together`` on calls written by hand: what it must find, and not."""
    path = "/s/sessions/s0.json"
    first = f'1  pwrite64(7<{path}>, "{{\\"gen\\"..."..., 512, 512) = 512'
    other = f'1  pwrite64(7<{path}>, "{{\\"gen\\"..."..., 512, 0) = 512'
    synced = f"1  fdatasync(7<{path}>)    = 0"
    store_synced = "1  syncfs(3</s/sessions>)    = 0"
    failed = "1  syncfs(3</s/sessions>)    = -1 EIO (Input/output error) (INJECTED)"
    assert unsynced_together([first], [other]) == [other]
    assert unsynced_together([first], [failed, other]) == [other]
    assert unsynced_together([first], [synced, other]) == []
    assert unsynced_together([first], [store_synced, other]) == []
    assert unsynced_together([first, first, first]) == []
    # A sync counts where it returned, a write where it began.
    begun = "1  syncfs(3</s/sessions> <unfinished ...>"
    write_begun = f'2  pwrite64(7<{path}>, "{{\\"gen\\"..."..., 512, 0 <unfinished ...>'
    returned = "1  <... syncfs resumed>)    = 0"
    write_returned = "2  <... pwrite64 resumed>)    = 512"
    cut = as_done([begun, write_begun, returned, write_returned])
    assert cut == [write_begun, "1  syncfs(3</s/sessions>)    = 0"]
    assert unsynced_together([first], cut) == [write_begun]
    assert unsynced_together([first], as_done([begun, returned, other])) == []


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683792k
41 27 0:45 / /mnt/fuse rw,nosuid,nodev,relatime shared:9 - fuse.sshfs host:/ rw
42 27 0:46 / /mnt/over rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b
43 27 0:47 / /mnt/nfs rw,relatime - nfs4 host:/export rw
"""


def test_which_file_systems_one_sync_stands_for():
    assert kernel_version("6.18.44-fc-v1252") == (6, 18)
    assert kernel_version("5.4.0-150-generic") == (5, 4)
    assert kernel_version("weird") is None
    ext4, tmpfs = os.makedev(254, 0), os.makedev(0, 27)
    assert file_system_type(ext4, MOUNTINFO) == "ext4"
    assert file_system_type(os.makedev(0, 45), MOUNTINFO) == "fuse.sshfs"
    assert file_system_type(os.makedev(9, 9), MOUNTINFO) is None
    assert why_not_at_once(ext4, "5.8.0", MOUNTINFO) is None
    assert why_not_at_once(tmpfs, "6.1.0-13-amd64", MOUNTINFO) is None
    # Before 5.8 a failed writeback left syncfs returning 0.
    assert "5.8" in str(why_not_at_once(ext4, "5.7.19", MOUNTINFO))
    assert "5.8" in str(why_not_at_once(ext4, "4.19.0-27-amd64", MOUNTINFO))
    assert why_not_at_once(ext4, "", MOUNTINFO) is not None
    for minor, kind in [(45, "fuse.sshfs"), (46, "overlay"), (47, "nfs4")]:
        assert kind in str(why_not_at_once(os.makedev(0, minor), "6.1.0", MOUNTINFO))
    assert "not in /proc/self/mountinfo" in str(why_not_at_once(os.makedev(9, 9), "6.1", ""))
