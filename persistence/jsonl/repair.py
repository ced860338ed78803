"""Cutting a log back to its last line to keep, at open: the one place that tells an
ordinary crash from damage.

What follows the last line to keep is either

- an *unacknowledged tail*: whole lines that continue the sequence (a batch written to
  the log whose WAL record was never synced, so it was never acknowledged), and maybe
  a last line cut short by the crash. Cutting it is ordinary recovery: logged at info
  level, nothing kept;
- or *damage*: bytes that are not such a tail (a line that does not decode, or breaks
  the sequence, with more after it). Then the cut part is kept beside the log as
  ``<stem>.jsonl.damaged-<pid>-<offset>`` for inspection, and an error is logged;
  ``JsonlStorage.damaged_files()`` lists such files and ``clear_damaged()`` removes them.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .files import truncate_file
from .layout import Layout
from .scan import BrokenLine, decode_key, lines

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Cut:
    """What a cut removed: ``lines`` whole unacknowledged lines and ``torn`` bytes of a
    last line cut short; or, when ``damaged``, the file where the rest was kept."""

    lines: int = 0
    torn: int = 0
    damaged: Path | None = None


def cut_tail(layout: Layout, path: Path, size: int, keep: int, last_seq: int) -> Cut:
    """Cut ``path`` (``size`` bytes) back to ``keep`` bytes, where the line of
    ``last_seq`` ends (the last to keep)."""
    cut = _classify(path, size, keep, last_seq)
    if cut.damaged is None:
        log.info(
            "log %s: cut %d unacknowledged lines after seq %d and %d bytes of a torn line "
            "(written before a crash, never acknowledged)",
            path,
            cut.lines,
            last_seq,
            cut.torn,
        )
    else:
        cut.damaged = layout.damaged(path, f"{os.getpid()}-{keep}")
        with open(path, "rb") as source, open(cut.damaged, "wb") as aside:
            source.seek(keep)
            shutil.copyfileobj(source, aside)
        log.error(
            "log %s is damaged after byte %d (seq %d): the rest (%d bytes) is kept in %s",
            path,
            keep,
            last_seq,
            size - keep,
            cut.damaged,
        )
    truncate_file(path, keep)
    return cut


def _classify(path: Path, size: int, keep: int, last_seq: int) -> Cut:
    cut = Cut()
    reached = keep
    try:
        for _head, _start, end in lines(path, keep, last_seq, decode_key, size):
            cut.lines += 1
            reached = end
    except BrokenLine:
        cut.damaged = path  # the real name is given by the caller
        return cut
    cut.torn = size - reached  # no newline in it: lines() yields every complete line
    return cut
