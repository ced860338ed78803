"""Bounding the WAL segments that replay kept aside as damaged (``wal_replay.py``).

Replay renames a segment it cannot trust to ``<n>.wal.damaged-<pid>-<ns>`` rather than
replaying it again at the next open. Those stay for an operator until
``clear_damaged``; but a disk that keeps damaging segments, or a loop of crashes that
each keep some aside, would grow them without limit and fill the disk the store needs.
So at each open that may write, the oldest kept-aside segments are removed until at
most ``wal_damaged_max_count`` of them remain, holding at most ``wal_damaged_max_bytes``
together. Only names replay itself gives a kept-aside segment are counted or removed:
nothing else in the directory, nor a session's damaged files. Never those this very
open kept aside: the damage was just found, and nobody has seen them yet (they take no
more room than the WAL they were); the next open's bound counts them with the rest.
Oldest by the time in their names, which replay makes later than every earlier one's
(``wal_replay.discard_segments``), whatever the clock did meanwhile.

Everything here blocks; it runs in the worker thread of the open.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .files import fsync_dir, unlink_quietly
from .layout import DAMAGED_MARK, SEGMENT_SUFFIX, Layout


def _log() -> Any:
    """The logger, structlog imported at the first removal: an open that removes nothing
    (nearly every one; every offline tool's read) need not import it, and with rich
    installed that import is a good part of a tool's start."""
    import structlog

    return structlog.get_logger("bamboo_session.persistence.jsonl.damaged_wal")


# ``<n>.wal.damaged-<pid>-<ns>``: the segment number, then the pid and the time (ns) of
# the replay that kept it aside.
_KEPT_ASIDE: Final = re.compile(
    r"(\d+)" + re.escape(SEGMENT_SUFFIX + DAMAGED_MARK) + r"(\d+)-(\d+)\Z"
)


@dataclass(frozen=True, slots=True)
class KeptAside:
    path: Path
    set_aside_ns: int  # when replay kept it aside
    number: int  # the segment's number: its order within one replay
    size: int


def kept_aside_segments(layout: Layout) -> list[KeptAside]:
    """The segments replay kept aside, oldest first."""
    found = []
    try:
        entries = list(os.scandir(layout.wal))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _KEPT_ASIDE.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # removed meanwhile (a clear_damaged)
            continue
        found.append(KeptAside(Path(entry.path), int(match[3]), int(match[1]), size))
    found.sort(key=lambda kept: (kept.set_aside_ns, kept.number))
    return found


def newest_stamp(layout: Layout) -> int:
    """The time (ns) in the newest kept-aside segment's name; 0 if there is none."""
    return max((segment.set_aside_ns for segment in kept_aside_segments(layout)), default=0)


def bound_kept_aside(
    layout: Layout, max_count: int, max_bytes: int, just_kept: Collection[Path] = ()
) -> list[Path]:
    """Remove the oldest kept-aside segments until at most ``max_count`` remain, of at
    most ``max_bytes`` together; the paths removed (each logged). ``just_kept``, what
    this open's replay kept aside, count but stay whatever the bounds: they are the
    evidence of the damage this open found (an operator has not seen them yet), and
    they held no more room as the WAL they were a moment ago; the next open's bound
    takes them, oldest first, should they still be beyond it."""
    kept = kept_aside_segments(layout)
    total = sum(segment.size for segment in kept)
    removed: list[Path] = []
    stays = set(just_kept)
    for segment in kept:
        if len(kept) - len(removed) <= max_count and total <= max_bytes:
            break
        if segment.path in stays:
            continue
        # (Gone already, a clear_damaged's meanwhile: it counts as removed all the same.)
        unlink_quietly(segment.path)
        total -= segment.size
        removed.append(segment.path)
        _log().warning(
            "wal_damaged_segment_removed",
            path=str(segment.path),
            bytes=segment.size,
            kept=len(kept) - len(removed),
            kept_bytes=total,
            max_count=max_count,
            max_bytes=max_bytes,
        )
    if removed:
        fsync_dir(layout.wal)
    return removed
