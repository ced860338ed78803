"""A WAL record's fields outside its CRC, checked against what the CRC covers.

A record's ``seq`` and ``off`` (where its first line goes in the session's log) are
not covered by its CRC; its lines, each holding its own seq, are. Damage to either
field once had replay cut a log's acknowledged lines as a tail, or write lines over
others (found by ``make fuzz``): replay (``wal_replay.py``) takes the seq from the
record's first line, and reads the log from its start when the offset does not start
the line the record says it does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from .scan import decode_key, raw_lines

# What these find is said in replay's name: an operator filters logs by it.
log = logging.getLogger("bamboo_session.persistence.jsonl.wal_replay")


def first_seq_held(session_id: str, said: int, first_line: bytes) -> int:
    """The seq of a record's first line: its ``seq`` field is outside its CRC, its lines
    (each holding its seq) are not. A damaged field saying less had acknowledged lines
    cut as a tail past the record's end."""
    try:
        held = decode_key(first_line).seq
    except (msgspec.DecodeError, UnicodeDecodeError):
        return said  # a line of another format: the field is all there is
    if held != said:
        log.error(
            "session %r: a WAL record says its lines start at seq %d, and its first line "
            "holds seq %d; the WAL is damaged: replayed by its lines' seqs, and the WAL "
            "segments are kept aside",
            session_id,
            said,
            held,
        )
    return held


def fits_log(path: Path, offset: int, seq: int) -> bool:
    """Whether the log may hold ``seq``'s line at ``offset``, as a WAL record says: the
    offset starts a line, and a whole line there, if the log holds one, is ``seq``'s (a
    line that does not decode is a crash's torn tail, which replay cuts)."""
    with open(path, "rb") as file:
        if offset > 0:
            file.seek(offset - 1)
            if file.read(1) != b"\n":
                return False
        for _start, _end, raw in raw_lines(file, offset):
            try:
                return decode_key(raw).seq == seq
            except (msgspec.DecodeError, UnicodeDecodeError):
                return True
    return True
