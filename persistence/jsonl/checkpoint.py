"""Checkpoints: ``sessions/<stem>.json``, a session's metadata and how far into its log it
reaches. The history is not in it: that is the log's ``message`` events.

A checkpoint file is two *slots* of equal size, each one line: a JSON object
``{"gen":"<16 hex digits>","crc":"<8 hex digits>","checkpoint":{...}}`` padded with
spaces to the slot's size (fixed-width fields, so each part is found at a fixed place:
an open reads 100,000s of these). The valid slot with the highest ``gen`` is the
checkpoint (``crc``: the CRC-32 of the ``checkpoint`` JSON, seeded with ``gen``). A
new one is written in place over the *other* slot than the one last synced, so
whatever a crash cuts short, one whole slot is left:

- creating a session writes the whole file (both slots) atomically and durably;
- a periodic checkpoint is one ``pwrite`` of a few hundred bytes and no sync: no new
  inode, no rename, no journal commit while the session streams. Losing it loses
  nothing: the log is replayed from the position the older slot names;
- a durable one (a session closed or expired, metadata imported) is that ``pwrite``
  plus ``fdatasync``, after which its slot is the synced one;
- the first write after an open does not know which slot is on disk, so it syncs the
  file first and then treats the newest slot as the synced one; unless the open's sync
  of the whole file system (``syncfs``, on Linux: one call, not 100,000) returned
  first, after which every file on it as the open found it is on disk (where one sync
  can stand for the files': ``fs_sync.py``). That sync runs in a worker thread once
  the open returned; a first write before it returned syncs its file (``open_sync.py``);
- a checkpoint grown past its slot's size is written as a new, larger file (atomic and
  durable).

The old format (up to the storage contract v2) is one JSON object holding the messages
too: :class:`LegacyCheckpoint`. Recovery converts it (``recovery.py``); messages it
held that the log does not (a session created with messages) become the session's
*preamble* (``sessions/<stem>.preamble``), written once and never changed.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from bamboo_session.protocol.models import Message, SessionMetadata

from ..base import StorageError
from .files import datasync, pwrite_all, read_at, read_file, write_atomic

MIN_SLOT: Final = 512
SLOT_ALIGN: Final = 256
_SLOT_START: Final = b'{"gen":"'
_SLOT_HEAD: Final = b'{"gen":"%016x","crc":"%08x","checkpoint":'
_HEAD_SIZE: Final = len(_SLOT_HEAD % (0, 0))  # where the checkpoint JSON starts
_GEN: Final = slice(len(_SLOT_START), len(_SLOT_START) + 16)
_CRC: Final = slice(_GEN.stop + len(b'","crc":"'), _GEN.stop + len(b'","crc":"') + 8)

FileStamp = tuple[int, int, int]  # (inode, size, mtime_ns): a file's identity and state


class Coverage(msgspec.Struct, array_like=True, frozen=True):
    """What a message index file holds: ``count`` entries, for the messages of the log's
    first ``offset`` bytes, which end with seq ``seq``."""

    count: int = 0
    seq: int = 0
    offset: int = 0


class Checkpoint(msgspec.Struct, kw_only=True):
    """A session's metadata at ``metadata.last_seq``, whose line ends at byte
    ``log_offset`` of the log; the message index's coverage; and the number of history
    messages that precede the log (the preamble, from the old format)."""

    metadata: SessionMetadata
    log_offset: int = 0
    index: Coverage = Coverage()
    preamble: int = 0


class LegacyCheckpoint(msgspec.Struct):
    """The old format: the session with every message, and its log position."""

    metadata: SessionMetadata
    messages: list[Message] = []
    last_seq: int = 0
    log_offset: int = 0


class SlotFile(NamedTuple):
    """What the writer knows of a checkpoint file: the newest slot's generation, the
    slots' size, and which slot is known to be on disk (None: not known)."""

    generation: int
    capacity: int
    synced: int | None


class Found(NamedTuple):
    """A checkpoint file's newest valid slot: its checkpoint, generation and index."""

    checkpoint: Checkpoint
    generation: int
    capacity: int
    slot: int

    def slots(self, synced: int | None = None) -> SlotFile:
        return SlotFile(self.generation, self.capacity, synced)


class CheckpointDamaged(StorageError):
    """Neither slot of a checkpoint file holds a valid checkpoint."""


_encoder = msgspec.json.Encoder()
_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)
_legacy_decoder = msgspec.json.Decoder(LegacyCheckpoint)
_messages_decoder = msgspec.json.Decoder(list[Message])


def stamp_of(stat: os.stat_result) -> FileStamp:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def encode_slot(checkpoint: Checkpoint, generation: int) -> bytes:
    """The slot's line without its padding."""
    payload = _encoder.encode(checkpoint)
    return _SLOT_HEAD % (generation, _crc(generation, payload)) + payload + b"}"


def _crc(generation: int, payload: bytes) -> int:
    """The CRC-32 of the checkpoint JSON, seeded with the generation: a slot whose
    generation and content do not belong together fails it."""
    return zlib.crc32(payload, generation & 0xFFFFFFFF)


def capacity_for(body: bytes) -> int:
    """A slot size with room for the checkpoint to grow by a quarter and more (counters
    gain digits; metadata only grows through an import, and outgrowing a slot costs
    one atomic rewrite)."""
    wanted = (len(body) + 1) * 5 // 4 + 64
    return max(MIN_SLOT, -(-wanted // SLOT_ALIGN) * SLOT_ALIGN)


def _padded(body: bytes, capacity: int) -> bytes:
    return body + b" " * (capacity - len(body) - 1) + b"\n"


def parse(data: bytes, session_id: str | None = None) -> Found | LegacyCheckpoint:
    """The checkpoint a file holds: its newest valid slot, or the old format; with
    ``session_id``, only one of that session (see :func:`_of_session`)."""
    return _of_session(_parse(data), session_id)


def _of_session(
    found: Found | LegacyCheckpoint, session_id: str | None
) -> Found | LegacyCheckpoint:
    """``found``, if it is the checkpoint of ``session_id`` (None: of any): a file that
    names another session (copied or renamed by hand; the old format has no CRC) is
    not this session's. Taken as it was, the session was gone from the index and the
    other id there instead, with no log of its own (its reads failed), even an id no
    call accepts (``../x``), from which the store builds the paths of its files."""
    if session_id is not None:
        metadata = (
            found.metadata if isinstance(found, LegacyCheckpoint) else found.checkpoint.metadata
        )
        if metadata.id != session_id:
            raise CheckpointDamaged(f"it is the checkpoint of session {metadata.id!r}")
    return found


def _parse(data: bytes) -> Found | LegacyCheckpoint:
    for capacity in _capacities(data):
        found = _newest_slot(data, capacity)
        if found is not None:
            return found
    try:
        return _legacy_decoder.decode(data)
    except msgspec.DecodeError:
        pass
    raise CheckpointDamaged("neither slot holds a valid checkpoint")


def _capacities(data: bytes) -> list[int]:
    """The slot sizes the file may have been written with: half its size; and where
    its first line ends, which still holds when the file lost its end (a whole first
    slot was set aside with the rest, and the session's user and title with it)."""
    size = len(data)
    found = [size // 2] if size % 2 == 0 else []
    first_line = data.find(b"\n") + 1
    if first_line >= MIN_SLOT and first_line % SLOT_ALIGN == 0 and first_line not in found:
        found.append(first_line)
    return found


def _newest_slot(data: bytes, capacity: int) -> Found | None:
    """The newest valid slot of slots of ``capacity`` bytes, if any."""
    # Either slot's start will do: a first slot whose opening bytes were damaged still
    # leaves the second one whole (each slot's CRC vouches for it).
    if not (data.startswith(_SLOT_START) or data.startswith(_SLOT_START, capacity)):
        return None
    first, second = _generation(data, 0), _generation(data, capacity)
    # The newest first; only the one taken is checked and decoded.
    for at, generation in (
        ((capacity, second), (0, first)) if second > first else ((0, first), (capacity, second))
    ):
        payload = _payload(data, at, capacity, generation)
        if payload is not None:
            try:
                checkpoint = _checkpoint_decoder.decode(payload)
            except msgspec.DecodeError:
                continue
            return Found(checkpoint, generation, capacity, at // capacity)
    return None


def _generation(data: bytes, at: int) -> int:
    """The generation the slot at ``at`` claims (:func:`_payload` checks it); -1 if
    the slot does not start as :func:`encode_slot` writes it."""
    if not data.startswith(_SLOT_START, at):
        return -1
    try:
        return int(data[at + _GEN.start : at + _GEN.stop], 16)
    except ValueError:
        return -1


def _payload(data: bytes, at: int, capacity: int, generation: int) -> bytes | None:
    """The checkpoint JSON of the slot at ``at``, if its CRC vouches for it (and for
    the generation it claims)."""
    end = data.rfind(b"}", at, at + capacity)
    payload = data[at + _HEAD_SIZE : end]
    try:
        crc = int(data[at + _CRC.start : at + _CRC.stop], 16)
    except ValueError:
        return None
    return payload if end > 0 and _crc(generation, payload) == crc else None


def read(path: Path) -> Found | LegacyCheckpoint | None:
    """The checkpoint at ``path``; None when there is none; CheckpointDamaged."""
    data = read_file(path)
    if data is None:
        return None
    try:
        return parse(data)
    except CheckpointDamaged as exc:
        raise CheckpointDamaged(f"checkpoint {path} is damaged: {exc}") from None


def create(path: Path, checkpoint: Checkpoint, generation: int = 1) -> tuple[SlotFile, FileStamp]:
    """Write a whole new checkpoint file, both slots alike, atomically and durably."""
    body = encode_slot(checkpoint, generation)
    capacity = capacity_for(body)
    slot = _padded(body, capacity)
    stat = write_atomic(path, slot + slot, durable=True)
    return SlotFile(generation, capacity, 0), stamp_of(stat)


def update(
    path: Path | str,
    checkpoint: Checkpoint,
    slots: SlotFile | None,
    durable: bool,
    on_disk: bool = False,
) -> tuple[SlotFile, FileStamp]:
    """Write ``checkpoint`` over the slot that is not known to be on disk; with
    ``durable``, on disk when this returns. ``slots``: what the last write returned
    (None after an open). ``on_disk``: the file as it is was synced since its last
    write (the open's sync of the file system returned), so its newest slot needs no
    sync of its own. FileNotFoundError when the file is gone (a session deleted meanwhile)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if slots is None or slots.synced is None:
            slots = _sync_current(fd, path, sync=not (on_disk and slots is None))
            if slots is None:  # the old format: replaced by the new one
                os.close(fd)
                fd = -1
                return create(Path(path), checkpoint)
        generation = slots.generation + 1
        body = encode_slot(checkpoint, generation)
        if len(body) + 1 > slots.capacity:
            os.close(fd)
            fd = -1
            return create(Path(path), checkpoint, generation)
        assert slots.synced is not None
        target = 1 - slots.synced
        pwrite_all(fd, _padded(body, slots.capacity), target * slots.capacity)
        if durable:
            datasync(fd)
        stamp = stamp_of(os.fstat(fd))
        return SlotFile(generation, slots.capacity, target if durable else slots.synced), stamp
    finally:
        if fd >= 0:
            os.close(fd)


def update_many(
    items: list[tuple[str, Checkpoint, SlotFile | None, bool]],
) -> list[tuple[SlotFile, FileStamp] | Exception]:
    """:func:`update` (not durable) of each ``(path, checkpoint, slots, on_disk)``, in
    one call: each one's result or failure (OSError, CheckpointDamaged) in its place."""
    results: list[tuple[SlotFile, FileStamp] | Exception] = []
    for path, checkpoint, slots, on_disk in items:
        try:
            results.append(update(path, checkpoint, slots, False, on_disk))
        except (OSError, StorageError) as exc:
            results.append(exc)
    return results


def _sync_current(fd: int, path: Path | str, sync: bool = True) -> SlotFile | None:
    """Sync the file as it is (unless it is known on disk) and say which of its slots
    is the newest (None: the file is in the old format)."""
    data = read_at(fd, 0, os.fstat(fd).st_size)
    try:
        found = parse(data)
    except CheckpointDamaged as exc:
        raise CheckpointDamaged(f"checkpoint {path} is damaged: {exc}") from None
    if isinstance(found, LegacyCheckpoint):
        return None
    if sync:
        datasync(fd)
    return found.slots(synced=found.slot)


# -- the preamble ------------------------------------------------------------------------


def write_preamble(path: Path, messages: list[Message], durable: bool = True) -> None:
    write_atomic(path, _encoder.encode(messages), durable=durable)


def read_preamble(path: Path) -> list[Message]:
    data = read_file(path)
    if data is None:
        raise StorageError(f"the preamble {path} of the session's history is missing")
    try:
        return _messages_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise StorageError(f"the preamble {path} is damaged: {exc}") from None
