"""The one sync of the checkpoints' file system that a writable open starts
(``fs_sync.py``), run in a worker thread while the server already listens, and what
waits for it.

It stands for a sync of each checkpoint file as the open found it (checkpoint.py): a
file's first write over a slot after the open needs its newest slot on disk. Run
before the open returned, it held the start up for as long as the kernel took to write
whatever was dirty on that file system: 0.30 s after a fill, 4.97 s right after a close
that wrote 100,000 checkpoints (bench/RESULTS.md). Now the open returns at once, and:

- no checkpoint file's first write after the open goes over a slot whose counterpart
  is not known to be on disk (``Checkpointer``): the writes of many (``write_dirty``:
  the park's, the close's) wait for this sync and then go with no sync of their files
  if it succeeded; one written alone before it returned (a session closed or expired)
  syncs its own file first, and so does every first write if it failed (as where it
  is not run at all);
- a failure is what it was when the open ran it: logged, and the store's syncs
  distrusted (``on_failure``: every WAL segment kept until a restart,
  ``bamboo_store_sync_failed`` 1); no WAL segment is deleted before the sync returned
  (``Retirement.hold_until``), so none goes that the failure would have kept;
- the close waits for it, so no thread of the store outlives the store's close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bamboo_session.tasks import detached

from .fs_sync import sync_file_system

log = logging.getLogger(__name__)


class OpenSync:
    """The open's sync of the checkpoints' file system: not started (nothing to sync,
    or read-only), under way, or settled (``succeeded``)."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        # Whether the sync returned and stands for a sync of each file on the device:
        # only read once :meth:`settled` returned (False until then).
        self.succeeded = False
        self.seconds: float | None = None  # how long it took, once it returned

    def start(self, directory: Path, device: int, on_failure: Callable[[], None]) -> None:
        """Sync ``directory``'s file system (``device``) in a worker thread."""
        assert self._task is None, "the open's sync runs once"
        self._task = detached(self._run(directory, device, on_failure), name="bamboo-open-syncfs")

    @property
    def pending(self) -> bool:
        """Started and not returned yet: a first write would wait for it."""
        return self._task is not None and not self._task.done()

    async def settled(self) -> bool:
        """Once the sync returned (at once if it did, or none was started): whether each
        checkpoint file on its device, as the open found it, is on disk. A cancelled
        caller leaves the sync running (others wait for it too)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})
        return self.succeeded

    async def _run(self, directory: Path, device: int, on_failure: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            self.succeeded = await asyncio.to_thread(sync_file_system, directory, device)
            self.seconds = time.monotonic() - started
        except OSError as exc:
            log.error(
                "could not sync the store's file system (%s): a write to it failed since "
                "it was last synced, maybe of what this store holds; its checkpoints are "
                "synced file by file, and every WAL segment is kept until a restart "
                "(check the disk)",
                exc,
            )
            on_failure()
        except Exception:  # a defect: nothing known on disk, each file synced on its own
            log.exception("the sync of the store's file system failed")
        else:
            if self.succeeded:  # (else fs_sync.py said why not)
                log.debug("synced the store's file system in %.3f s", self.seconds)
