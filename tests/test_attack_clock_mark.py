"""What a real ``serve`` does with a ``<data dir>/CLOCK`` an operator's bad day or an
attacker with the data directory left (persistence/jsonl/clock_mark.py): it starts,
attaches, stops cleanly, writes nothing outside the data directory, and stamps times
near its machine's clock.

- A mark years ahead (a machine booted with its clock wrong once) held the store's
  clock ahead at half speed: every time stamped nine years on, for eighteen years. It
  is left out with an error, and written over.
- A symlink in its place had the mark's 21 bytes written over the first bytes of the
  file it named, or a file made where a dangling one pointed.
- A FIFO in its place hung the start forever (the read waited for a writer); a sparse
  file of a terabyte failed it with a MemoryError (the whole file was read).
- A file longer than a mark (an ISO time written by hand) had each mark written over
  its start and its tail left: never read again.

Real server processes, real files in temp dirs."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence.jsonl.clock_mark import MARK_NAME, read_mark
from bamboo_session.protocol.models import utcnow
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_store_clock_restart import attached

FAR = "the store's clock mark"


def metadata(server: ServerProcess, session_id: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{session_id}?limit=1"
    with urllib.request.urlopen(url, timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())["metadata"]
    return found


def time_of(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def served_once(data: Path, log: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A start, a session made and attached, its metadata read, a SIGTERM (exit 0)."""
    server = ServerProcess(data, log)
    try:
        await server.start_in_loop()
        peer = await attached(server, "s", create=True)
        found = metadata(server, "s")
        await peer.close()
        assert server.stop() == 0
    finally:
        server.kill()
    return found, server.log_records()


def mark_bytes(moment: datetime) -> bytes:
    return b"%020d\n" % (
        (moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)) // timedelta(microseconds=1)
    )


async def test_a_mark_years_ahead_is_left_out_with_an_error_and_written_over(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / MARK_NAME).write_bytes(mark_bytes(utcnow() + timedelta(days=3650)))

    found, records = await served_once(data, tmp_path / "first.log")
    assert time_of(found["updated_at"]) - utcnow() < timedelta(minutes=5)
    errors = [r for r in records if r.get("level") == "error"]
    assert len(errors) == 1 and str(errors[0]["event"]).startswith(FAR), errors
    assert_no_tracebacks(records, allowed=[FAR])
    left = read_mark(data)
    assert left is not None and left - utcnow() < timedelta(minutes=5)  # written over

    _, records = await served_once(data, tmp_path / "second.log")
    assert_no_tracebacks(records)  # nothing said again


def symlink_to_a_file(data: Path, tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"another file's bytes, not the store's\n")
    (data / MARK_NAME).symlink_to(tmp_path / "victim")


def dangling_symlink(data: Path, tmp_path: Path) -> None:
    (data / MARK_NAME).symlink_to(tmp_path / "elsewhere")


def fifo(data: Path, tmp_path: Path) -> None:
    os.mkfifo(data / MARK_NAME)


def sparse_terabyte(data: Path, tmp_path: Path) -> None:
    with (data / MARK_NAME).open("wb") as out:
        out.truncate(10**12)


@pytest.mark.parametrize(
    "plant", [symlink_to_a_file, dangling_symlink, fifo, sparse_terabyte], ids=lambda f: f.__name__
)
async def test_a_hostile_file_in_place_of_the_mark_is_refused_and_the_server_runs(
    tmp_path: Path, plant: Callable[[Path, Path], None]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    plant(data, tmp_path)
    found, records = await served_once(data, tmp_path / "serve.log")
    assert time_of(found["updated_at"]) - utcnow() < timedelta(minutes=5)
    assert_no_tracebacks(records)
    if plant is symlink_to_a_file:
        assert (tmp_path / "victim").read_bytes() == b"another file's bytes, not the store's\n"
    assert not (tmp_path / "elsewhere").exists()


async def test_a_mark_file_longer_than_a_mark_reads_after_the_next_mark(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / MARK_NAME).write_text(utcnow().isoformat() + "\n")  # written by hand
    found, records = await served_once(data, tmp_path / "serve.log")
    assert_no_tracebacks(records)
    left = read_mark(data)
    assert left is not None and left >= time_of(found["updated_at"])


async def test_a_mark_within_the_bound_is_taken(tmp_path: Path) -> None:
    """Half an hour ahead (the clock set back while the server was down, a change lost
    at a kill): taken, with the warning of a clock held ahead, and no error."""
    data = tmp_path / "data"
    data.mkdir()
    ahead = utcnow() + timedelta(minutes=30)
    (data / MARK_NAME).write_bytes(mark_bytes(ahead))
    found, records = await served_once(data, tmp_path / "serve.log")
    assert time_of(found["updated_at"]) > ahead
    assert_no_tracebacks(records)
    assert any("ahead of this machine's clock" in str(r["event"]) for r in records), records
