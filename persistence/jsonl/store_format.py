"""The JSONL store's format number: ``<base>/FORMAT``, one JSON object ``{"format": N}``,
so that a version refuses a store written in a format newer than it reads instead of
reading it as something it is not (docs/upgrading.md).

- ``FORMAT`` is this code's format. It moves when a version writes what an earlier
  one would misread or drop; a version reads every format up to its own.
- A store without the file was made by a version before the record, which wrote
  format 1: a writable open writes the record (atomically and durably) before it
  recovers anything; a read-only open reads the store as format 1 and writes nothing.
  A record that cannot be written (a full disk, a directory the server may not write
  to) is said in a warning, and the store opens as format 1 all the same, as those
  versions opened it: the next writable open writes it.
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

from ..base import StoreMisconfigured, StoreTooNew
from .files import file_expected, write_atomic
from .layout import FORMAT_NAME, TMP_SUFFIX, Layout

log = logging.getLogger(__name__)

FORMAT: Final = 1
# The record is a few bytes; more is read only to tell a file that is none.
_MOST: Final = 4096
# What a write of the record that a crash cut short leaves (layout.temporary_path).
_LEFTOVER: Final = re.compile(re.escape(f"{FORMAT_NAME}.") + "[0-9a-f]{8}" + re.escape(TMP_SUFFIX))


class _Record(msgspec.Struct):
    format: int


_decoder = msgspec.json.Decoder(_Record)


def check_format(layout: Layout, writable: bool) -> int:
    """The store's format; written as this code's where the store has no record and
    ``writable``. Raises StoreTooNew for a newer format, StoreMisconfigured for a
    ``FORMAT`` that holds no record."""
    path = layout.format
    data = _read(layout)
    if data is None:
        if writable:
            _write_record(layout)
        return FORMAT
    try:
        found = _decoder.decode(data).format
    except msgspec.DecodeError:
        found = 0
    if found < 1:
        raise StoreMisconfigured(
            f"{path} is not a store format record (it should hold {encode(FORMAT)!r}): "
            "put back the one the store had, or, for a store only versions of format 1 "
            "wrote, remove it to have it written again"
        )
    if found > FORMAT:
        raise StoreTooNew(str(path), found, FORMAT)
    return found


def encode(number: int) -> bytes:
    return b'{"format": %d}\n' % number


def _write_record(layout: Layout) -> None:
    """The record of a store that has none, after what an earlier write of it that a
    crash cut short left. Not written, the store is format 1 all the same: said, and
    opened."""
    try:
        with os.scandir(layout.base) as entries:
            leftovers = [entry.path for entry in entries if _LEFTOVER.fullmatch(entry.name)]
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        write_atomic(layout.format, encode(FORMAT), durable=True)
    except OSError as exc:
        log.warning(
            "the store's format record %s could not be written (%s): the store is "
            "opened as format %d, as the versions before the record opened it, and the "
            "record is written at a later open",
            layout.format,
            exc.strerror or exc,
            FORMAT,
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
