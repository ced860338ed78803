"""The one sync of the checkpoints' file system at a writable open (Linux's ``syncfs``),
and when it may stand for a sync of each checkpoint file.

A checkpoint's first write over a slot after an open needs the slot it keeps to be on
disk (checkpoint.py): a ``fdatasync`` of the file, about a millisecond each, 34 s for
the 100,000 a restart's park dirties. One ``syncfs`` stands for all of them only where
it writes and reports what a ``fdatasync`` of each file would; elsewhere each file is
synced before its first write, as before:

- Linux 5.8 and later. Before, ``syncfs`` returned 0 when the writeback of a file had
  failed (EIO), which a ``fdatasync`` of that file reports (since 4.13): a slot lost
  so would be taken for on disk, and the next write made over the other one, the
  only good copy.
- A local file system whose ``sync_fs`` writes the data as ``fdatasync`` does: ext2/3/4,
  XFS, Btrfs, F2FS, tmpfs (found by the directory's device in /proc/self/mountinfo).
  On FUSE ``syncfs`` hands the pages to the daemon and asks it for no sync (a
  ``fdatasync`` does); NFS, SMB, 9p and Ceph answer to a server; an overlay's errors
  are its upper file system's; a device not found (a Btrfs subvolume that is no
  mount) is not guessed at.
- Each checkpoint file on the device synced: one the operator put elsewhere (a symlink
  to another file system) is synced on its own (the caller compares devices). A
  symlinked ``sessions/`` is no such case: the file system synced is its target's.

The store finds the device at its open (:func:`device_to_sync`, before it listens) and
syncs it in a worker thread (:func:`sync_file_system`, ``open_sync.py``), off the way
to listening. A failed ``syncfs`` (OSError) is the caller's to log; it then syncs file
by file.

Not covered, as ``fdatasync`` does not cover it either: a writeback error that another
``syncfs`` of the same file system (say ``sync -f``) saw before this open is reported
to that caller only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# glibc 2.14 and later, musl: None elsewhere (then every file is synced on its own).
_syncfs = (
    getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None) if sys.platform == "linux" else None
)

REPORTS_ERRORS_SINCE: Final = (5, 8)  # the first Linux whose syncfs reports writeback errors
SYNCED_AS_EACH_FILE: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})


def kernel_version(release: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a kernel release (``os.uname().release``), None if unread."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return (int(found[1]), int(found[2])) if found else None


def file_system_type(device: int, mountinfo: str) -> str | None:
    """The type of the file system mounted from ``device`` (an ``st_dev``), as
    /proc/self/mountinfo says (its third field ``major:minor``, its type after ``-``)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mountinfo.splitlines():
        head, separator, tail = line.partition(" - ")
        fields = head.split(" ")
        if separator and len(fields) > 2 and fields[2] == wanted:
            return tail.split(" ", 1)[0]
    return None


def why_not_at_once(device: int, release: str, mountinfo: str) -> str | None:
    """Why one ``syncfs`` of ``device`` may not stand for a sync of each of its files
    (None: it may)."""
    version = kernel_version(release)
    if version is None or version < REPORTS_ERRORS_SINCE:
        return f"Linux {release} does not report a failed writeback to syncfs (5.8 does)"
    kind = file_system_type(device, mountinfo)
    if kind not in SYNCED_AS_EACH_FILE:
        return f"its file system ({kind or 'not in /proc/self/mountinfo'}) is not one of " + (
            ", ".join(sorted(SYNCED_AS_EACH_FILE))
        )
    return None


def device_to_sync(directory: Path) -> int | None:
    """The device (``st_dev``) of the file system ``directory`` is on, if one ``syncfs``
    of it stands for a sync of each of its files (the module's docstring). None where
    it does not: no ``syncfs`` (not Linux), or (logged) an older Linux, another file
    system. OSError when the directory cannot be opened."""
    if _syncfs is None:
        return None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        device = os.fstat(fd).st_dev
    finally:
        os.close(fd)
    why_not = why_not_at_once(device, os.uname().release, _mountinfo())
    if why_not is not None:
        log.info("checkpoint files are synced one by one at their first write: %s", why_not)
        return None
    return device


def sync_file_system(directory: Path, device: int) -> bool:
    """Sync the file system ``directory`` is on, once: True, everything written to it
    before the call is on disk. False (logged) when ``directory`` is no longer on
    ``device`` (:func:`device_to_sync`'s: an operator moved it meanwhile), so the sync
    stands for nothing the caller knows of. OSError when it fails."""
    assert _syncfs is not None, "device_to_sync found no syncfs"
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_dev != device:
            log.warning(
                "%s moved to another file system since the open: not synced as a whole; "
                "each checkpoint file is synced on its own before its first write",
                directory,
            )
            return False
        if _syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs of {directory}: {os.strerror(error)}")
    finally:
        os.close(fd)
    return True


def _mountinfo() -> str:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:  # no /proc: no type known, so no syncfs trusted
        return ""
