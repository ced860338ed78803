"""The index snapshot: ``index/snapshot.msgpack``, every session's metadata and the
state of its files as a clean close left them, so that the next open reads one file
instead of one checkpoint per session.

Open consumes it (deletes it, durably, before anything is written), and takes an entry
only while the session's files are exactly as the entry saw them (the checkpoint's
inode, size and mtime; the log's size). So a stale snapshot can never hide a change. A
read-only open reads it without deleting it. A snapshot of another version is ignored
(the checkpoints are read instead), and so is one whose entries do not match their
CRC-32 (version 3 on): an entry damaged on disk whose stamp still matched was taken as
it read, a ``last_seq`` of 0 for a log of six events, and the next append took seq 1
again, after seq 6 (found by tests/fuzz/fuzz_jsonl.py, h494).

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from typing import Final

import msgspec

from bamboo_session.protocol.models import SessionMetadata

from .checkpoint import Coverage, FileStamp
from .files import fsync_dir, read_file, write_atomic
from .layout import TMP_SUFFIX, Layout

log = logging.getLogger(__name__)

VERSION: Final = 3


class SnapshotEntry(msgspec.Struct, array_like=True):
    metadata: SessionMetadata
    log_offset: int  # where the checkpoint says the log ends: the log's size at close
    index: Coverage
    preamble: int
    stamp: FileStamp  # of the checkpoint file


class _Snapshot(msgspec.Struct):
    version: int
    crc: int  # CRC-32 of the entries' encoding
    entries: msgspec.Raw


class _Version(msgspec.Struct):
    version: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Snapshot)
_entries_decoder = msgspec.msgpack.Decoder(list[SnapshotEntry])
_version_decoder = msgspec.msgpack.Decoder(_Version)


def write(layout: Layout, entries: list[SnapshotEntry]) -> None:
    """Leaves the snapshot for the next open. One that cannot be written (a full disk,
    a directory turned read-only) costs only that open's speed, which then reads every
    checkpoint: said in a warning, not raised, so a close on a full disk ends cleanly."""
    encoded = _encoder.encode(entries)
    data = _encoder.encode(_Snapshot(VERSION, zlib.crc32(encoded), msgspec.Raw(encoded)))
    try:
        write_atomic(layout.snapshot, data, durable=True)
    except OSError as exc:
        log.warning("index snapshot not written (%s): the next open reads every checkpoint", exc)


def consume(layout: Layout, read_only: bool) -> dict[str, SnapshotEntry]:
    """The snapshot's entries by id; unless ``read_only``, the file is removed first
    (durably), so that a later crash can never leave a stale snapshot behind."""
    if not read_only:
        for leftover in layout.index.glob("*" + TMP_SUFFIX):
            leftover.unlink()  # a snapshot write cut short by a crash
    data = read_file(layout.snapshot)
    if data is None:
        return {}
    if not read_only:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.snapshot)
        fsync_dir(layout.index)
    try:
        version = _version_decoder.decode(data).version
        if version != VERSION:
            log.info("ignoring the index snapshot of version %s: reading checkpoints", version)
            return {}
        snapshot = _decoder.decode(data)
        if zlib.crc32(snapshot.entries) != snapshot.crc:
            raise msgspec.DecodeError("its entries do not match their CRC-32")
        entries = _entries_decoder.decode(snapshot.entries)
    except msgspec.DecodeError as exc:
        log.warning("ignoring the index snapshot %s: %s", layout.snapshot, exc)
        return {}
    return {entry.metadata.id: entry for entry in entries}
