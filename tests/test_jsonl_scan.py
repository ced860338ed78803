"""The one reader of log lines (persistence/jsonl/scan.py): seqs must follow one by one,
a seq is found by bisection over byte offsets however long the lines, and the heads it
decodes leave payloads alone."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from bamboo_session.persistence.jsonl import scan
from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import AgentEvent, Message, StoredEvent, utcnow


def write_log(path: Path, sizes: list[int]) -> list[int]:
    """A log of token events of about these sizes; returns each line's start."""
    starts, data = [], bytearray()
    for seq, size in enumerate(sizes, start=1):
        starts.append(len(data))
        event = StoredEvent(seq, utcnow(), AgentEvent.token("x" * size), f"k{seq}")
        data += encode_stored_event(event) + b"\n"
    path.write_bytes(bytes(data))
    return starts


def test_lines_follow_seqs_and_stop_at_a_broken_one(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_log(path, [10, 10, 10])
    seqs = [head.seq for head, _start, _end in scan.lines(path, 0, 0, scan.decode_key)]
    assert seqs == [1, 2, 3]
    with pytest.raises(scan.BrokenLine, match="where seq 2 belongs"):
        list(scan.lines(path, 0, 1, scan.decode_key))  # the first line holds 1, not 2
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + lines[2] + b'{"seq":4')
    found = []
    with pytest.raises(scan.BrokenLine, match=f"byte {len(lines[0])}"):
        for head, _start, _end in scan.lines(path, 0, 0, scan.decode_head):
            found.append(head.seq)
    assert found == [1]


def test_a_torn_last_line_is_not_yielded(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_log(path, [5, 5])
    path.write_bytes(path.read_bytes() + b'{"seq":3,"ts":')
    assert [h.seq for h, _s, _e in scan.lines(path, 0, 0, scan.decode_key)] == [1, 2]


@pytest.mark.parametrize("shape", ["small", "mixed", "huge"])
def test_locate_finds_every_seq(tmp_path: Path, shape: str) -> None:
    rng = random.Random(shape)
    sizes = {
        "small": [rng.randrange(10, 60) for _ in range(5000)],
        "mixed": [rng.choice([20, 200, 20_000, 300_000]) for _ in range(120)],
        "huge": [900_000] * 6 + [10] * 50 + [900_000] * 3,
    }[shape]
    path = tmp_path / "s.jsonl"
    starts = write_log(path, sizes)
    end = (len(sizes), path.stat().st_size)
    longest = max(sizes) + 200
    for after in [0, 1, 2, len(sizes) // 2, len(sizes) - 1, *rng.sample(range(len(sizes)), 8)]:
        seq, offset = scan.locate(path, after, (0, 0), end)
        assert seq <= after and offset == starts[seq]  # a line start, at or before
        assert starts[after] - offset <= scan.BISECT_UNTIL + 2 * longest  # and near it


def test_read_spans_reads_nearby_lines_together(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    starts = write_log(path, [10] * 100)
    data = path.read_bytes()
    wanted = [(starts[i], starts[i + 1] - starts[i] - 1) for i in (3, 4, 50, 99) if i < 99]
    wanted.append((starts[99], len(data) - starts[99] - 1))
    found = scan.read_spans(path, wanted)
    assert found == [data[offset : offset + length] for offset, length in wanted]


def test_a_head_names_a_message_and_its_id(tmp_path: Path) -> None:
    message = Message.user("hello")
    line = encode_stored_event(StoredEvent(7, utcnow(), AgentEvent.message(message), "k"))
    head = scan.decode_head(line)
    assert (head.seq, head.key, head.is_message, head.message_id) == (7, "k", True, message.id)
    token = scan.decode_head(encode_stored_event(StoredEvent(8, utcnow(), AgentEvent.token("t"))))
    assert (token.is_message, token.message_id) == (False, "")


def test_a_line_keeps_an_empty_key_apart_from_none() -> None:
    # "" is a key (PROTOCOL.md): a line carries "key": ""; a keyless line has no "key",
    # as lines written by earlier versions, and "key": null reads as keyless too.
    keyed = encode_stored_event(StoredEvent(1, utcnow(), AgentEvent.token("t"), ""))
    keyless = encode_stored_event(StoredEvent(2, utcnow(), AgentEvent.token("t")))
    assert b'"key":""' in keyed and b'"key"' not in keyless
    null = keyless[:-1] + b',"key":null}'
    assert [scan.decode_key(line).key for line in (keyed, keyless, null)] == ["", None, None]
    assert [scan.decode_head(line).key for line in (keyed, keyless, null)] == ["", None, None]
    assert [scan.decode_stored_event(line).key for line in (keyed, keyless)] == ["", None]


def test_a_long_run_without_a_newline_is_read_once_not_again_at_each_chunk(
    tmp_path: Path,
) -> None:
    """A zeroed tail (a crash's) or one long line: its bytes were joined again at each
    64 KiB read, and 32 MiB took 11 s to scan (seen in the scanner while writing
    tests/fuzz/fuzz_jsonl.py, whose inputs are too short to show it). Lines are found
    across chunks as before."""
    path = tmp_path / "s.jsonl"
    starts = write_log(path, [10, 3 * scan.READ_CHUNK, 10])
    size = path.stat().st_size
    run = 32 << 20
    with open(path, "ab") as file:
        file.write(b"\0" * run)
    tracemalloc.start()
    try:
        with open(path, "rb") as file:
            found = list(scan.raw_lines(file, 0))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(start, stop) for start, stop, _line in found] == list(
        zip(starts, [*starts[1:], size], strict=True)
    )
    assert all(len(line) == stop - start - 1 for start, stop, line in found)
    # Not a time (11 s before, 0.03 s now), which tests do not assert: what makes it.
    # Joined again at each chunk, the run is copied whole while its last copy is still
    # held, so at least twice its bytes at once; read once, it is held once, plus a
    # chunk or two. Half a run between the two: buffers of megabytes, which no free
    # list or earlier test of this process changes.
    assert peak < 1.5 * run, peak
