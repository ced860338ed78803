"""Stands in for persistence/jsonl/sync_helper.py in tests: the real helper, except
that its ``fdatasync`` fails with EIO once for each time the file named by
``BAMBOO_TEST_FAIL_SYNC`` is created (the failure removes it). The real disk never
fails on demand; this makes the helper's own failure path run for real."""

import errno
import os
import posix
import runpy
from pathlib import Path

_trigger = Path(os.environ["BAMBOO_TEST_FAIL_SYNC"])
_real_fdatasync = posix.fdatasync


def _fdatasync(fd: int) -> None:
    if _trigger.exists():
        _trigger.unlink()
        raise OSError(errno.EIO, "injected EIO in the sync helper")
    _real_fdatasync(fd)


posix.fdatasync = _fdatasync  # what the helper calls
helper = Path(__file__).resolve().parent.parent / "persistence" / "jsonl" / "sync_helper.py"
runpy.run_path(str(helper), run_name="__main__")
