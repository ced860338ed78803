"""The one reader of event-log lines: every part of the backend that reads a log
(reads, histories, the key window, recovery, WAL replay) goes through here.

A log is one JSON object per line, ``{"seq": N, "ts": ..., "event": {...}, "key": ...}``,
seqs consecutive from 1. :func:`lines` walks complete lines from a byte offset where a
line starts, decodes each with the decoder the caller needs, and checks that each seq
follows the one before; it raises :class:`BrokenLine` at the first line that does not
(:func:`valid_lines` says where the valid ones end instead).
The decoders decode no more than their caller reads:

- :func:`decode_stored_event`: a StoredEvent whose AgentEvent stays JSON until used;
- :func:`decode_head`: seq, time, key and the event's type (and a message's id);
- :func:`decode_key`: seq and key only (the idempotency-key window).

:func:`locate` finds where the line after a given seq starts by bisecting byte offsets
between two known places, so no per-session table of offsets is needed; and
:func:`read_spans` reads lines at known places (the message index's) in few reads.
Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final, Protocol, TypeVar

import msgspec

from bamboo_session.protocol.log_lines import decode_stored_event

from ..base import StorageError
from .files import read_at

__all__ = [
    "BrokenLine",
    "KeyHead",
    "LineHead",
    "decode_head",
    "decode_key",
    "decode_stored_event",
    "lines",
    "locate",
    "raw_lines",
    "read_spans",
    "valid_lines",
]

READ_CHUNK: Final = 1 << 16
# Bisection stops once the two known places are this close: then a plain scan is cheaper.
BISECT_UNTIL: Final = 1 << 16
# Spans read for the message index closer than this are read together, gap included.
COALESCE_GAP: Final = 1 << 14

T = TypeVar("T", bound="HasSeq")


class HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


class _MessageId(msgspec.Struct):
    id: str = ""


class _EventHead(msgspec.Struct):
    type: str = ""
    message: _MessageId | None = None


class LineHead(msgspec.Struct):
    """A log line without its event's payload."""

    seq: int
    ts: datetime
    event: _EventHead
    key: str | None = None

    @property
    def is_message(self) -> bool:
        return self.event.type == "message"

    @property
    def message_id(self) -> str:
        message = self.event.message
        return "" if message is None else message.id


class KeyHead(msgspec.Struct):
    seq: int
    key: str | None = None


decode_head: Callable[[bytes], LineHead] = msgspec.json.Decoder(LineHead).decode
decode_key: Callable[[bytes], KeyHead] = msgspec.json.Decoder(KeyHead).decode


class BrokenLine(StorageError):
    """A line that does not decode, or whose seq does not follow the one before."""

    def __init__(self, path: Path | str, offset: int, expected_seq: int | None, why: str):
        where = "" if expected_seq is None else f" where seq {expected_seq} belongs"
        super().__init__(f"log {path} is damaged at byte {offset}{where}: {why}")
        self.offset = offset
        self.expected_seq = expected_seq


def raw_lines(
    file: BinaryIO, offset: int, end: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """Complete lines of ``file`` from ``offset`` (a line start) up to ``end``, as
    ``(start, end, line)`` with the newline stripped; a last line without its newline is
    not yielded. Reads in chunks, so a caller that stops early reads little."""
    file.seek(offset)
    # The current line's bytes read before this chunk, kept as pieces and joined once
    # its newline comes: joined at every chunk, a run of bytes without a newline (a
    # zeroed tail after a crash) was copied again each 64 KiB, and 32 MiB of it took
    # 11 s to scan at open, 16 MiB 1.1 s: a time quadratic in its length.
    pieces: list[bytes] = []
    line_start = position = offset
    while end is None or position < end:
        chunk = file.read(READ_CHUNK if end is None else min(READ_CHUNK, end - position))
        if not chunk:
            return
        base = position
        position += len(chunk)
        start = 0
        while (newline := chunk.find(b"\n", start)) != -1:
            line = chunk[start:newline]
            if pieces:
                pieces.append(line)
                line = b"".join(pieces)
                pieces = []
            yield line_start, base + newline + 1, line
            start = newline + 1
            line_start = base + start
        if start < len(chunk):
            pieces.append(chunk[start:])


def lines(
    path: Path | str,
    offset: int,
    after_seq: int | None,
    decode: Callable[[bytes], T],
    end: int | None = None,
) -> Iterator[tuple[T, int, int]]:
    """``(item, start, end)`` for each complete line from ``offset``, whose seqs follow
    ``after_seq`` one by one (None: the first line's seq, whatever it is, starts the
    run). Raises :class:`BrokenLine` at the first line that does not."""
    expected = after_seq
    with open(path, "rb") as file:
        for start, stop, raw in raw_lines(file, offset, end):
            try:
                item = decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise BrokenLine(path, start, _next(expected), str(exc)) from None
            if expected is not None and item.seq != expected + 1:
                raise BrokenLine(path, start, expected + 1, f"it holds seq {item.seq}")
            if expected is None and item.seq < 1:
                raise BrokenLine(path, start, None, f"it holds seq {item.seq}")
            expected = item.seq
            yield item, start, stop


def valid_lines(
    path: Path, offset: int, after_seq: int, upto_seq: int | None = None
) -> tuple[int, int]:
    """(last seq, end offset) of the consecutive valid lines from ``offset``, where the
    line after ``after_seq`` begins (``after_seq`` 0 at offset 0: from the start), up to
    ``upto_seq`` at most."""
    last, end = after_seq, offset
    with contextlib.suppress(FileNotFoundError, BrokenLine):
        for head, _start, stop in lines(path, offset, after_seq, decode_key):
            if last == upto_seq:
                break
            last, end = head.seq, stop
    return last, end


def _next(seq: int | None) -> int | None:
    return None if seq is None else seq + 1


def locate(
    path: Path | str, after_seq: int, low: tuple[int, int], high: tuple[int, int]
) -> tuple[int, int]:
    """A place ``(seq, offset)`` at or before the start of the line after ``after_seq``,
    where the line at ``offset`` holds ``seq + 1``: found by bisecting between two such
    places, ``low`` (at or before it) and ``high`` (after it). From there a scan reads
    at most about :data:`BISECT_UNTIL` bytes before it reaches the line."""
    seq, start = low
    limit = high[1]
    with open(path, "rb") as file:
        while limit - start > BISECT_UNTIL and seq < after_seq:
            middle = (start + limit) // 2
            found = _line_start(file, middle, limit)
            if found is None:
                limit = middle  # one long line spans middle..limit: look to the left
                continue
            before = _seq_at(file, found) - 1
            if before <= after_seq:
                seq, start = before, found
            else:
                limit = found
    return seq, start


def _line_start(file: BinaryIO, at: int, limit: int) -> int | None:
    """The first line start in ``[at, limit)``, if any."""
    position = at - 1  # the newline ending the line before may sit just before ``at``
    file.seek(position)
    while position < limit:
        chunk = file.read(min(READ_CHUNK, limit - position))
        if not chunk:
            return None
        newline = chunk.find(b"\n")
        if newline != -1:
            start = position + newline + 1
            return start if start < limit else None
        position += len(chunk)
    return None


_SEQ_PREFIX: Final = b'{"seq":'


def _seq_at(file: BinaryIO, offset: int) -> int:
    """The seq of the line at ``offset``: read from the first bytes when the line starts
    as the writer writes it, else (any other order of fields) from the decoded line."""
    file.seek(offset)
    head = file.read(32)
    if head.startswith(_SEQ_PREFIX):
        digits = head[len(_SEQ_PREFIX) :].split(b",", 1)[0]
        if digits.isdigit():
            return int(digits)
    for _start, _end, raw in raw_lines(file, offset):
        try:
            return decode_key(raw).seq
        except msgspec.DecodeError as exc:
            raise BrokenLine(getattr(file, "name", "?"), offset, None, str(exc)) from None
    raise BrokenLine(getattr(file, "name", "?"), offset, None, "no complete line")


def read_spans(path: Path | str, spans: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes at each ``(offset, length)`` of ``spans`` (ascending offsets), reading
    nearby spans together."""
    found: list[bytes] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        i = 0
        while i < len(spans):
            first, last = i, i
            while (
                last + 1 < len(spans)
                and spans[last + 1][0] - (spans[last][0] + spans[last][1]) <= COALESCE_GAP
            ):
                last += 1
            base = spans[first][0]
            data = read_at(fd, base, spans[last][0] + spans[last][1] - base)
            for offset, length in spans[first : last + 1]:
                found.append(data[offset - base : offset - base + length])
            i = last + 1
    finally:
        os.close(fd)
    return found
