"""Format 1 -> 2: a store's file names moved to their case-folded stems
(``layout.py``), at the first writable open, before recovery reads any name.

Format 1 named a session's files by its id, so on a case-insensitive file system
(macOS's default, SMB shares) ``Chat`` and ``chat`` shared their files. The move:

1. ``FORMAT`` says ``{"format": 2, "renaming": true}``, durably, before any rename:
   from then on a version that reads format 1 only refuses the store
   (``StoreTooNew``) rather than read it half renamed, and a read-only open of this
   version asks for a writable one first.
2. Every session's file whose name has a capital (the only ones whose names change;
   a name format 1 never made stays as it is) is renamed to its format-2 name; then
   both directories are synced.
3. ``FORMAT`` says ``{"format": 2}``.

A crash at any instant leaves a store the next open finishes: each file's new name
follows from its own name, and a name already moved has no capital, so a resumed
move renames what is left and nothing twice. A session whose files are half under
the old names, half under the new, is read whole once the move ends, and nothing
reads it before. A file under both names (only by hand, or a copy from elsewhere:
this code never makes one) is not overwritten: the format-2 one is read, the other
kept aside as ``<new name>.damaged-<pid>-<time>-<n>``, said in a warning.

Nothing to rename (no id with a capital) and a record that cannot be written (a full
disk): the store opens as format 1, as before (``store_format.py``). Everything here
blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from ..base import StorageError
from .files import fsync_dir
from .layout import Layout, format_2_name

log = logging.getLogger(__name__)


def names_to_move(layout: Layout) -> list[tuple[Path, str, str]]:
    """(directory, format-1 name, format-2 name) of each file whose name changes."""
    moves = []
    for directory in (layout.sessions, layout.events):
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                new = format_2_name(entry.name)
                if new is not None:
                    moves.append((directory, entry.name, new))
    return moves


def move_names(layout: Layout, moves: list[tuple[Path, str, str]]) -> None:
    """Rename each file to its format-2 name, then sync both directories. A failure
    is StorageError: the open stops there, and the next one goes on from it."""
    if moves:  # said first: on a large store the renames take a while, before listening
        log.info(
            "store %s: renaming %d files to format 2's names (once, at the first open "
            "after the upgrade); the server listens once it is done",
            layout.base,
            len(moves),
        )
    for number, (directory, old, new) in enumerate(moves):
        source, target = directory / old, directory / new
        try:
            if os.path.lexists(target):
                aside = layout.damaged(target, f"{os.getpid()}-{time.time_ns()}-{number}")
                log.warning(
                    "%s has its format-2 name beside it (%s), which is read; it is kept "
                    "aside as %s",
                    source,
                    target,
                    aside,
                )
                target = aside
            os.rename(source, target)
        except OSError as exc:
            raise StorageError(
                f"cannot rename {source} to {target} ({exc.strerror or exc}), moving the "
                "store to format 2: nothing is lost, and the next open goes on from there"
            ) from None
    for directory in (layout.sessions, layout.events):
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(directory)
    if moves:
        log.info("store %s: %d files renamed to format 2's names", layout.base, len(moves))
