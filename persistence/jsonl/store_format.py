"""The JSONL store's format number: ``<base>/FORMAT``, one JSON object ``{"format": N}``,
so that a version refuses a store written in a format newer than it reads instead of
reading it as something it is not (docs/upgrading.md).

- ``FORMAT`` is this code's format. It moves when a version writes what an earlier
  one would misread or drop; a version reads every format up to its own.
- A store without the file was made by a version before the record, which wrote
  format 1: a writable open writes the record (atomically and durably) before it
  recovers anything; a read-only open reads the store as format 1 and writes nothing.
- A newer format is refused (:class:`StoreTooNew`: ``serve`` exits 2) before anything
  in the store is read or changed; so is a file that holds no format record (edited
  by hand, a directory in its place), naming it.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import os
from typing import Final

import msgspec

from ..base import StoreMisconfigured, StoreTooNew
from .files import file_expected, write_atomic
from .layout import Layout

FORMAT: Final = 1
# The record is a few bytes; more is read only to tell a file that is none.
_MOST: Final = 4096


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
            write_atomic(path, encode(FORMAT), durable=True)
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


def _read(layout: Layout) -> bytes | None:
    """The file's first bytes, or None when there is none. Never through a symlink (a
    link put in its place names another file), and never waiting on a FIFO."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(layout.format, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink; EACCES...: say which file
        raise StoreMisconfigured(f"cannot read {layout.format}: {exc.strerror}") from None
    try:
        file_expected(os.fstat(fd), layout.format)  # a directory, a FIFO: refused
        return os.read(fd, _MOST)
    finally:
        os.close(fd)
