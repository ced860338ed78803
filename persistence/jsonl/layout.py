"""Where everything of a JSONL store lives: the one place that builds its paths and
file names, and reads names back into session ids.

::

    <base>/LOCK                   flock'ed while a storage has the store open for writing
                                  (exclusive), or an offline reader (shared)
    <base>/FORMAT                 the store's format, {"format": 2} (store_format.py)
    <base>/CLOCK                  the time of the newest change written lazily, which
                                  the next open's clock starts from (clock_mark.py)
    <base>/sessions/<stem>.json   checkpoint: metadata and log position, two slots
    <base>/sessions/<stem>.preamble  history from the old format that has no log line
    <base>/sessions/<stem>.json.replacing  the checkpoint of a session replacing an
                                  expired one, until it takes the old checkpoint's place
    <base>/sessions/<stem>.json.deleted  a delete under way (deletes.py)
    <base>/events/<stem>.jsonl    the event log: the truth of the session's events
    <base>/events/<stem>.idx      message index: seq and place of each message event
    <base>/wal/<n>.wal            fsync mode's shared write-ahead log segments
    <base>/index/snapshot.msgpack the index snapshot a clean close leaves (fast start)

``<stem>`` is a session's file stem (format 2): its id where the id has no upper-case
letter, else the id in lower case, ``~`` and the positions of its capitals as a bit
mask in lower-case hex (bit i: the i-th character; ``Chat`` -> ``chat~1``, ``cHaT`` ->
``chat~a``). Ids compare exactly, but a case-insensitive file system (macOS's default,
SMB shares) takes ``Chat.json`` and ``chat.json`` for one file: every name the store
makes is lower case, and no two ids share a stem even once folded (``~`` is in no id,
so no lower-case id has the stem of another). A 128-character id's stem is at most 161
characters: with the longest suffix and a temporary or kept-aside tail, well inside a
file name's 255 bytes. Format 1 named files by the id itself (a read-only open of
such a store reads them so: ``Layout.case_folded`` false); the first writable open
renames them (``case_names.py``).

A session id is ``[A-Za-z0-9_.-]{1,128}``, so suffixes never collide: a name is read
back by its suffix alone. Files kept aside for inspection carry ``.damaged-`` in their
name; temporary files end with ``.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bamboo_session.protocol.ids import is_valid_session_id

CHECKPOINT_SUFFIX: Final = ".json"
PREAMBLE_SUFFIX: Final = ".preamble"
TOMBSTONE_SUFFIX: Final = ".json.deleted"
REPLACEMENT_SUFFIX: Final = ".json.replacing"
LOG_SUFFIX: Final = ".jsonl"
INDEX_SUFFIX: Final = ".idx"
SEGMENT_SUFFIX: Final = ".wal"
TMP_SUFFIX: Final = ".tmp"
DAMAGED_MARK: Final = ".damaged-"
SNAPSHOT_NAME: Final = "snapshot.msgpack"
LOCK_NAME: Final = "LOCK"
FORMAT_NAME: Final = "FORMAT"
# A name kept aside ends with the mark and a tag of digits and dashes (a pid, a time, an
# offset). A session's own files end with a suffix of letters, so a session whose id
# holds the mark (``x.damaged-1``: the id is a peer's choice) is never taken for one.
_DAMAGED_NAME: Final = re.compile(re.escape(DAMAGED_MARK) + r"[0-9-]+\Z")


def temporary_path(path: Path) -> Path:
    """A fresh name beside ``path`` for writing its next content (then renamed over it):
    one of its own, so a write can never truncate another write's file."""
    return path.with_name(f"{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


# Each character of an id as a bit of its capitals' mask (read back to front).
_CAPITAL_BITS: Final = {c: "1" if chr(c).isupper() else "0" for c in range(128)}
_MASK: Final = re.compile(r"[1-9a-f][0-9a-f]{0,31}\Z")
# A format-1 name of a session's file: the id, a suffix, and the tail of a temporary
# file or of one kept aside (only ever read to rename it: ``case_names.py``).
_FORMAT_1_NAME: Final = re.compile(
    r"([A-Za-z0-9_.-]{1,128}?)"
    r"((?:\.json(?:l|\.deleted|\.replacing)?|\.preamble|\.idx)"
    r"(?:\.damaged-[0-9-]+|\.[0-9a-f]{8}\.tmp)?)\Z"
)


def file_stem(session_id: str) -> str:
    """The stem of a (valid) session id's files in format 2."""
    if session_id.islower():  # the common case: no capital (and some letter)
        return session_id
    mask = int(session_id[::-1].translate(_CAPITAL_BITS), 2)
    return f"{session_id.lower()}~{mask:x}" if mask else session_id


def id_of_stem(stem: str) -> str | None:
    """The session id whose format-2 stem is ``stem``, or None for a stem no id has
    (only the one spelling :func:`file_stem` makes is read back)."""
    folded, tilde, mask = stem.partition("~")
    if not is_valid_session_id(folded) or folded != folded.lower():
        return None
    if not tilde:
        return folded
    if _MASK.match(mask) is None:
        return None
    bits = int(mask, 16)
    if bits >> len(folded):
        return None
    chars = list(folded)
    while bits:
        low = bits & -bits
        at = low.bit_length() - 1
        if not "a" <= chars[at] <= "z":
            return None
        chars[at] = chars[at].upper()
        bits ^= low
    return "".join(chars)


def format_2_name(name: str) -> str | None:
    """The format-2 name of a session's file named ``name`` in format 1; None where
    both formats name it alike (an id without capitals) or it is no session's."""
    if name == name.lower():
        return None
    match = _FORMAT_1_NAME.match(name)
    if match is None or not is_valid_session_id(match[1]):
        return None
    return file_stem(match[1]) + match[2]


@dataclass(frozen=True, slots=True)
class Layout:
    """The paths of the store under ``base``; ``case_folded``: its files named by
    format 2's stems (false: by the ids themselves, format 1's, for a store of that
    format opened without renaming them)."""

    base: Path
    case_folded: bool = True

    @property
    def sessions(self) -> Path:
        return self.base / "sessions"

    @property
    def events(self) -> Path:
        return self.base / "events"

    @property
    def index(self) -> Path:
        return self.base / "index"

    @property
    def wal(self) -> Path:
        return self.base / "wal"

    @property
    def lock(self) -> Path:
        return self.base / LOCK_NAME

    @property
    def format(self) -> Path:
        """The store's format record (``store_format.py``)."""
        return self.base / FORMAT_NAME

    @property
    def snapshot(self) -> Path:
        return self.index / SNAPSHOT_NAME

    def directories(self) -> tuple[Path, ...]:
        """The directories an open for writing creates."""
        return (self.sessions, self.events, self.index, self.wal)

    def is_store(self) -> bool:
        """Whether ``base`` holds a store (what a read-only open requires)."""
        return self.sessions.is_dir() and self.events.is_dir()

    # -- one session's files -----------------------------------------------------------

    def stem(self, session_id: str) -> str:
        """What the names of the session's files start with."""
        return file_stem(session_id) if self.case_folded else session_id

    def id_with_suffix(self, name: str, suffix: str) -> str | None:
        """The session id of file ``name`` if it ends with ``suffix`` and the rest is
        the stem of a valid id."""
        if not name.endswith(suffix):
            return None
        stem = name[: -len(suffix)]
        if self.case_folded:
            return id_of_stem(stem)
        return stem if is_valid_session_id(stem) else None

    def checkpoint_name(self, session_id: str) -> str:
        return self.stem(session_id) + CHECKPOINT_SUFFIX

    def log_name(self, session_id: str) -> str:
        return self.stem(session_id) + LOG_SUFFIX

    def checkpoint(self, session_id: str) -> Path:
        return self.sessions / (self.stem(session_id) + CHECKPOINT_SUFFIX)

    def checkpoint_file(self, session_id: str) -> str:
        """:meth:`checkpoint` as a string: 100,000 of them at a close (pathlib's cost).
        A lower-case id (most) is its own stem: no call for it."""
        if session_id.islower() or not self.case_folded:
            return f"{self.base}/sessions/{session_id}{CHECKPOINT_SUFFIX}"
        return f"{self.base}/sessions/{file_stem(session_id)}{CHECKPOINT_SUFFIX}"

    def tombstone(self, session_id: str) -> Path:
        return self.sessions / (self.stem(session_id) + TOMBSTONE_SUFFIX)

    def replacement(self, session_id: str) -> Path:
        """The checkpoint of a new session that replaces an expired one of its id, until
        it takes the old checkpoint's place (``lifecycle.py``)."""
        return self.sessions / (self.stem(session_id) + REPLACEMENT_SUFFIX)

    def preamble(self, session_id: str) -> Path:
        return self.sessions / (self.stem(session_id) + PREAMBLE_SUFFIX)

    def log(self, session_id: str) -> Path:
        return self.events / (self.stem(session_id) + LOG_SUFFIX)

    def log_file(self, session_id: str) -> str:
        """:meth:`log` as a string, for the writer's hot path (as checkpoint_file)."""
        if session_id.islower() or not self.case_folded:
            return f"{self.base}/events/{session_id}{LOG_SUFFIX}"
        return f"{self.base}/events/{file_stem(session_id)}{LOG_SUFFIX}"

    def message_index(self, session_id: str) -> Path:
        return self.events / (self.stem(session_id) + INDEX_SUFFIX)

    def session_files(self, session_id: str) -> tuple[Path, ...]:
        """Every file of a session but its checkpoint, for a delete to remove."""
        return (self.log(session_id), self.message_index(session_id), self.preamble(session_id))

    # -- the WAL -----------------------------------------------------------------------

    def segment(self, number: int) -> Path:
        return self.wal / f"{number:016d}{SEGMENT_SUFFIX}"

    def segments(self) -> list[tuple[int, Path]]:
        """The WAL segments, oldest first."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.wal) as entries:
            for entry in entries:
                stem = entry.name.removesuffix(SEGMENT_SUFFIX)
                if entry.name.endswith(SEGMENT_SUFFIX) and stem.isdigit():
                    found.append((int(stem), Path(entry.path)))
        return sorted(found)

    # -- files kept aside ----------------------------------------------------------------

    @staticmethod
    def damaged(path: Path, tag: str) -> Path:
        """Where a damaged part of ``path`` is kept for inspection."""
        return path.with_name(f"{path.name}{DAMAGED_MARK}{tag}")

    def damaged_files(self) -> list[Path]:
        """Every file kept aside as damaged, in the session, event and WAL directories."""
        found: list[Path] = []
        for directory in (self.sessions, self.events, self.wal):
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                found.extend(Path(e.path) for e in entries if _DAMAGED_NAME.search(e.name))
        return sorted(found)
