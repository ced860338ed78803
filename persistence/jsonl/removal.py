"""Removing files of the store: a deleted session's, and the ones kept aside as damaged.

A delete makes the checkpoint a tombstone in one atomic rename (synced), then removes
the session's other files, then the tombstone: a crash midway leaves a delete that the
next open finishes (``recovery.py``), never a half-deleted session.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .files import fsync_dir, unlink_quietly
from .layout import Layout


def delete_session_files(layout: Layout, session_id: str) -> None:
    tombstone = layout.tombstone(session_id)
    with contextlib.suppress(FileNotFoundError):
        os.replace(layout.checkpoint(session_id), tombstone)
    fsync_dir(layout.sessions)
    for path in layout.session_files(session_id):
        unlink_quietly(path)
    unlink_quietly(tombstone)


def remove_damaged(layout: Layout) -> list[Path]:
    """Removes every file kept aside as damaged; returns those it removed."""
    removed = [path for path in layout.damaged_files() if unlink_quietly(path)]
    if removed:
        fsync_dir(layout.sessions)
        fsync_dir(layout.events)
    return removed
