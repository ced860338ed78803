"""The JSONL store's format number: ``<base>/FORMAT``, one JSON object ``{"format": N}``,
so that a version refuses a store written in a format newer than it reads instead of
reading it as something it is not (docs/upgrading.md).

- ``FORMAT`` is this code's format. It moves when a version writes what an earlier
  one would misread or drop; a version reads every format up to its own.
  Format 2 (case-folded file names, ``layout.py``) is format 1 with its files renamed.
- A store without the file was made by a version before the record, which wrote
  format 1. A writable open of a format-1 store moves it to format 2 before it
  recovers anything (``case_names.py``: the record, atomically and durably, first
  with ``"renaming": true`` where files are to be renamed); a read-only open reads it
  as format 1 (its old names) and writes nothing, and refuses a store whose renaming
  was cut short (StorageError: a writable open finishes it).
  A record that cannot be written (a full disk, a directory the server may not write
  to) is said in a warning, and the store opens as format 1 all the same, with its
  old names, as those versions opened it: the next writable open moves it.
- A newer format is refused (:class:`StoreTooNew`: ``serve`` exits 2) before anything
  in the store is read or changed; so is a file that holds no format record (edited
  by hand, a directory or a symlink in its place), naming it.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from typing import Final

import msgspec

from ..base import StorageError, StoreMisconfigured, StoreTooNew
from .case_names import move_names, names_to_move
from .files import file_expected, write_atomic
from .layout import FORMAT_NAME, TMP_SUFFIX, Layout

log = logging.getLogger(__name__)

FORMAT: Final = 2
# The record is a few bytes; more is read only to tell a file that is none.
_MOST: Final = 4096
# What a write of the record that a crash cut short leaves (layout.temporary_path).
_LEFTOVER: Final = re.compile(re.escape(f"{FORMAT_NAME}.") + "[0-9a-f]{8}" + re.escape(TMP_SUFFIX))


class _Record(msgspec.Struct):
    format: int
    renaming: bool = False  # format 2's file names not all in place yet (case_names.py)


_decoder = msgspec.json.Decoder(_Record)


def check_format(layout: Layout, writable: bool) -> int:
    """The format the store opens as (1: its files under their old names); a format-1
    store is moved to this code's where ``writable``. Raises StoreTooNew for a newer
    format, StoreMisconfigured for a ``FORMAT`` that holds no record, StorageError for
    a read-only open of a store whose renaming was cut short, or a rename that fails."""
    found, renaming = _found(layout)
    if found == FORMAT and not renaming:
        return FORMAT
    if not writable:
        if renaming:
            raise StorageError(
                f"{layout.format}: the renaming of the store's files to format 2 was cut "
                "short; open the store for writing once (bamboo-session serve) to finish it"
            )
        return found
    moves = names_to_move(layout)
    if not renaming and not _write_record(layout, encode(FORMAT, renaming=bool(moves))):
        return found
    if moves or renaming:
        move_names(layout, moves)
        try:
            if renaming:  # what a kill in the last open's write of the record left
                _remove_leftovers(layout)
            write_atomic(layout.format, encode(FORMAT), durable=True)
        except OSError as exc:  # names and record agree: the next open writes it
            _warn(layout, exc, "the store's files have format 2's names all the same")
    return FORMAT


def _found(layout: Layout) -> tuple[int, bool]:
    """The store's format and whether its renaming is under way."""
    path = layout.format
    data = _read(layout)
    if data is None:
        return 1, False
    try:
        record = _decoder.decode(data)
        found, renaming = record.format, record.renaming
    except msgspec.DecodeError:
        found, renaming = 0, False
    if found < 1:
        raise StoreMisconfigured(
            f"{path} is not a store format record (it should hold {encode(FORMAT)!r}): "
            "put back the one the store had, or, for a store only versions of format 1 "
            "wrote, remove it to have it written again"
        )
    if found > FORMAT:
        raise StoreTooNew(str(path), found, FORMAT)
    return found, renaming


def encode(number: int, renaming: bool = False) -> bytes:
    if renaming:
        return b'{"format": %d, "renaming": true}\n' % number
    return b'{"format": %d}\n' % number


def _write_record(layout: Layout, record: bytes) -> bool:
    """The record of a store of format 1, after what an earlier write of it that a
    crash cut short left. Not written, the store is format 1 all the same: said, and
    opened (False)."""
    try:
        _remove_leftovers(layout)
        write_atomic(layout.format, record, durable=True)
    except OSError as exc:
        _warn(layout, exc, "the store is opened as format 1, with its files' old names")
        return False
    return True


def _remove_leftovers(layout: Layout) -> None:
    """The temporary files of writes of the record that a crash cut short."""
    with os.scandir(layout.base) as entries:
        leftovers = [entry.path for entry in entries if _LEFTOVER.fullmatch(entry.name)]
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)


def _warn(layout: Layout, exc: OSError, outcome: str) -> None:
    log.warning(
        "the store's format record %s could not be written (%s): %s, and the record "
        "is written at a later open",
        layout.format,
        exc.strerror or exc,
        outcome,
    )


def _read(layout: Layout) -> bytes | None:
    """The file's first bytes, or None when there is none. Never through a symlink (a
    link put in its place names another file), and never waiting on a FIFO."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(layout.format, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:  # EACCES...: say which file
        if exc.errno == errno.ELOOP:
            raise StoreMisconfigured(
                f"{layout.format} is a symbolic link, where the store keeps a file of its "
                "own: put the file itself in its place"
            ) from None
        raise StoreMisconfigured(f"cannot read {layout.format}: {exc.strerror}") from None
    try:
        file_expected(os.fstat(fd), layout.format)  # a directory, a FIFO: refused
        return os.read(fd, _MOST)
    finally:
        os.close(fd)
