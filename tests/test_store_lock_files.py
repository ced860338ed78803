"""The store lock (persistence/flock.py) on a lock file that takes no bytes: a FIFO in
its place, as a full disk would fail the holder's pid write. The pid is there only for
a refusal's message, so the writer still opens and holds the lock (r338: it failed
with a bare OSError naming no file, and kept the lock it had taken). And the lock file a
tool run as root makes: it belongs to the store's owner, whose server opens it after."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import StorageError, StorageLocked
from tests.support import NOBODY, unprivileged


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_lock_file_that_takes_no_pid_still_locks(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        url, lock = f"jsonl://{tmp_path / 'store'}", tmp_path / "store" / "LOCK"
    else:
        url, lock = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "s.db.lock"
    storage = await open_storage(url)  # a store, then its lock file swapped by hand
    await storage.close()
    lock.unlink()
    os.mkfifo(lock)
    writer = await open_storage(url)
    try:
        with pytest.raises(StorageLocked):  # held all the same
            await open_storage(url, read_only=True, offline=True)
    finally:
        await writer.close()
    reader = await open_storage(url, read_only=True, offline=True)  # and let go
    await reader.close()


async def open_and_close(url: str, **options: bool) -> None:
    await (await open_storage(url, **options)).close()


def nobodys_store_without_its_lock(home: Path, kind: str) -> tuple[str, Path]:
    """A store in ``home`` given to nobody, its lock file gone (restored from a backup
    without it): its URL, and where its lock file goes."""
    if kind == "jsonl":
        url, lock = f"jsonl://{home / 'store'}", home / "store" / "LOCK"
    else:
        url, lock = f"sqlite:///{home / 's.db'}", home / "s.db.lock"
    asyncio.run(open_and_close(url))
    lock.unlink()
    for path in (home, *home.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    return url, lock


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_lock_file_a_root_tool_makes_belongs_to_the_stores_owner(kind: str) -> None:
    """A store restored without its lock file, read by root (a migrate's source, an
    offline `ls`): the server, run as the store's owner, still opens it for writing."""
    if os.geteuid() != 0:
        pytest.skip("runs as root: it checks the lock file a root tool leaves behind")
    drop = unprivileged()
    home = Path(tempfile.mkdtemp(prefix="bamboo-owner-"))  # /tmp: reachable by nobody
    try:
        url, lock = nobodys_store_without_its_lock(home, kind)
        asyncio.run(open_and_close(url, read_only=True, offline=True))  # as root
        assert (lock.stat().st_uid, lock.stat().st_gid) == (NOBODY, NOBODY)
        script = (
            "import asyncio\n"
            "from bamboo_session.persistence import open_storage\n"
            "async def main():\n"
            f"    await (await open_storage({url!r})).close()\n"
            "asyncio.run(main())\n"
        )
        result = subprocess.run(
            [*drop, sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_lock_file_planted_as_a_dangling_symlink_makes_nothing_and_is_refused(
    kind: str,
) -> None:
    """The store's owner plants its lock file as a dangling symlink to a path it may
    not write (/etc/ld.so.preload, say); root then reads the store with an offline
    tool. The lock is never made through the link (r345: root made the target and the
    chown gave it to the store's owner): the read is refused, naming the lock file."""
    if os.geteuid() != 0:
        pytest.skip("runs as root: it checks what a root tool makes through a link")
    home = Path(tempfile.mkdtemp(prefix="bamboo-owner-"))
    outside = Path(tempfile.mkdtemp(prefix="bamboo-root-only-"))  # root's, 0700
    target = outside / "made-by-root"
    try:
        url, lock = nobodys_store_without_its_lock(home, kind)
        lock.symlink_to(target)
        os.lchown(lock, NOBODY, NOBODY)
        with pytest.raises(StorageError, match=r"cannot lock .*Too many levels of symbolic links"):
            asyncio.run(open_and_close(url, read_only=True, offline=True))  # as root
        assert not target.exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_lock_file_linked_to_an_existing_file_is_refused_and_the_file_kept(kind: str) -> None:
    """The store's owner plants its lock file as a symlink to a file of root's; root
    then runs a writer on the store (``cleanup``, a migrate's destination). The writer
    is refused, and never writes its pid through the link (r349: root's file became
    its pid)."""
    if os.geteuid() != 0:
        pytest.skip("runs as root: it checks what a root tool writes through a link")
    home = Path(tempfile.mkdtemp(prefix="bamboo-owner-"))
    outside = Path(tempfile.mkdtemp(prefix="bamboo-root-only-"))  # root's, 0700
    target = outside / "roots-file"
    target.write_text("root's precious contents\n")
    try:
        url, lock = nobodys_store_without_its_lock(home, kind)
        lock.symlink_to(target)
        os.lchown(lock, NOBODY, NOBODY)
        with pytest.raises(StorageError, match=r"cannot lock .*Too many levels of symbolic links"):
            asyncio.run(open_and_close(url))  # a writer, as root
        assert target.read_text() == "root's precious contents\n"
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
