"""Failure behaviour of a real server process: a full disk, a storage lock already held.

The disk fills up for real: the server child runs under ``RLIMIT_FSIZE`` with SIGXFSZ
ignored, so a write past the limit fails with EFBIG (a short write first, then the
error), exactly the path of ENOSPC. A limit cannot be lifted from outside the process,
so "space returns" is a restart without it on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.persistence.jsonl.layout import Layout
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import Peer, attach, run_server

FILE_LIMIT = 48 * 1024
PAYLOAD = "z" * 1500


def limit_file_size() -> None:  # runs in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@contextlib.asynccontextmanager
async def peer_of(server: ServerProcess, session_id: str, **hello: Any) -> AsyncIterator[Peer]:
    async with connect(server.url(session_id), subprotocols=["bamboo.v1"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        await peer.send({"type": "hello", **hello})
        welcome = await peer.recv()
        assert welcome["type"] == "welcome", welcome
        peer.welcome = welcome  # type: ignore[attr-defined]
        yield peer


def http_json(server: ServerProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
        return json.loads(response.read())


def log_lines(data_dir: Path, session_id: str) -> list[dict[str, Any]]:
    """Every line of the session's log, each of which must parse, ending in a newline."""
    raw = Layout(data_dir).log(session_id).read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in raw.splitlines()]


async def test_a_full_disk_refuses_appends_keeps_reads_and_recovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    limited = ServerProcess(data_dir, tmp_path / "limited.log", preexec_fn=limit_file_size)
    acked: dict[str, int] = {}
    failed: list[str] = []
    with limited:
        async with peer_of(limited, "full", create=True) as peer:
            for i in range(200):
                frame = {"type": "event", "id": i, "key": f"k{i}", "event": token(f"k{i}")}
                reply = await roundtrip(peer, frame)
                if reply["type"] == "ack":
                    assert not failed, "an append succeeded after one failed on a full file"
                    acked[f"k{i}"] = reply["seq"]
                else:
                    assert reply["code"] == "internal", reply
                    assert reply["message"].startswith("storage failed; retry later"), reply
                    assert "File too large" in reply["message"], reply
                    failed.append(f"k{i}")
                    if len(failed) == 5:
                        break
            assert acked and len(failed) == 5
            assert list(acked.values()) == list(range(1, len(acked) + 1))
            # The log holds exactly what was acknowledged: no torn line, no failed event.
            assert [line["key"] for line in log_lines(data_dir, "full")] == list(acked)
            # Reads still work, over WebSocket and HTTP.
            events = await roundtrip(peer, {"type": "events", "id": "e", "limit": 1000})
            assert [name(e) for e in events["events"]] == list(acked)
            history = await roundtrip(peer, {"type": "history", "id": "h"})
            assert history["type"] == "history"
            over_http = await asyncio.to_thread(http_json, limited, "/api/v1/sessions/full/events")
            assert over_http["last_seq"] == len(acked)
            # Other sessions (other files) are still served, appends included.
            async with peer_of(limited, "other", create=True) as other:
                ack = await roundtrip(other, {"type": "event", "id": 1, "event": token("x")})
                assert ack["type"] == "ack"
        assert limited.stop() == 0
    # Only the storage's own complaint is an error in its log; no traceback.
    records = limited.log_records()
    assert any(r["event"] == "append failed" for r in records)
    assert_no_tracebacks(
        records,
        allowed=(
            "append failed",
            "appends failing",
            "appending to the log of session 'full' failed",
            "auto-save",
        ),
    )

    # Space returns: the same directory, without the limit.
    with ServerProcess(data_dir, tmp_path / "unlimited.log") as server:
        async with peer_of(server, "full", last_seq=0) as peer:
            welcome = peer.welcome  # type: ignore[attr-defined]
            assert welcome["last_seq"] == len(acked) and welcome["resumed"] is True
            replayed = [name(await peer.recv_type("event")) for _ in acked]
            assert replayed == list(acked)
            # A retry of a refused append is stored now, as a new event (it never was).
            for key in failed:
                frame = {"type": "event", "id": key, "key": key, "event": token(key)}
                ack = await roundtrip(peer, frame)
                assert ack["type"] == "ack" and not ack.get("duplicate"), ack
            # A retry of an acknowledged one is a duplicate with its first seq.
            first = next(iter(acked))
            frame = {"type": "event", "id": "again", "key": first, "event": token(first)}
            ack = await roundtrip(peer, frame)
            assert (ack["seq"], ack["duplicate"]) == (acked[first], True)
        assert server.stop() == 0
    keys = [line["key"] for line in log_lines(data_dir, "full")]
    assert keys == [*acked, *failed]


async def test_a_batch_that_does_not_fit_is_stored_not_at_all(tmp_path: Path) -> None:
    """The batch that crosses the file limit is written short, then fails: it gets one
    ``internal`` error and none of its items stays in the log, not even the first."""
    data_dir = tmp_path / "data"
    acked: list[str] = []
    with ServerProcess(data_dir, tmp_path / "limited.log", preexec_fn=limit_file_size) as limited:
        async with peer_of(limited, "full", create=True) as peer:
            for b in range(40):
                keys = [f"b{b}.{i}" for i in range(5)]
                items = [{"event": token(key), "key": key} for key in keys]
                reply = await roundtrip(peer, {"type": "batch", "id": b, "items": items})
                if reply["type"] == "error":
                    assert reply["code"] == "internal" and "File too large" in reply["message"]
                    break
                assert reply["seqs"] == list(range(len(acked) + 1, len(acked) + 6))
                acked += keys
            else:
                raise AssertionError("the limit was never reached")
            assert acked, "the first batch already failed"
            assert [line["key"] for line in log_lines(data_dir, "full")] == acked
            events = await roundtrip(peer, {"type": "events", "id": "e", "limit": 1000})
            assert [name(e) for e in events["events"]] == acked
        assert limited.stop() == 0
    # Space returns: the refused batch, resent with its keys, is stored whole, once (by
    # an in-process server: only the limited one needed a process, for its rlimit).
    async with run_server(data_dir) as server, attach(server, "full") as (peer, _):
        items = [{"event": token(f"b{b}.{i}"), "key": f"b{b}.{i}"} for i in range(5)]
        reply = await roundtrip(peer, {"type": "batch", "id": "again", "items": items})
        assert reply["seqs"] == list(range(len(acked) + 1, len(acked) + 6))
        assert "duplicates" not in reply


async def test_readyz_stays_ready_while_a_session_near_the_file_limit_fails_now_and_then(
    tmp_path: Path,
) -> None:
    """A session whose log is near the file size limit: its small appends fit, its large
    ones fail (EFBIG), in turn, while another session appends. Each failure is that
    session's own file's, and another session appended just before: ``/readyz`` stays
    ready at every poll (its probe, a frame's worth of bytes, fails under this limit:
    only appends tell it anything)."""
    data_dir = tmp_path / "data"
    log = data_dir / "events" / "near.jsonl"
    room_kept = 1000  # bytes left in the log: a few small lines fit, never a large one

    def event(text: str, size: int) -> dict[str, Any]:
        return {"type": "event", "id": text, "event": {"type": "token", "content": "z" * size}}

    with ServerProcess(data_dir, tmp_path / "limited.log", preexec_fn=limit_file_size) as limited:
        async with (
            peer_of(limited, "good", create=True) as good,
            peer_of(limited, "near", create=True) as near,
        ):
            n = 0
            while (room := FILE_LIMIT - log_size(log)) > 2 * room_kept:
                n += 1
                size = min(len(PAYLOAD), room - room_kept)
                assert (await roundtrip(near, event(f"fill{n}", size)))["type"] == "ack"
            answers = []
            for n in range(5):
                # One round trip before each failure: well within the 10 s that another
                # session's append shows the store takes appends (readiness.ALONE_WITHIN).
                assert (await roundtrip(good, event(f"good{n}", 10)))["type"] == "ack"
                failed = await roundtrip(near, event(f"large{n}", FILE_LIMIT))
                assert failed["type"] == "error" and "File too large" in failed["message"]
                answers.append(await asyncio.to_thread(readyz, limited))
                assert (await roundtrip(near, event(f"small{n}", 10)))["type"] == "ack"
                answers.append(await asyncio.to_thread(readyz, limited))
            assert answers == [(200, "ready\n")] * 10


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


async def roundtrip(peer: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a request and return its reply (or its error), skipping other frames."""
    await peer.send(frame)
    while True:
        reply = await peer.recv(timeout=10)
        if reply.get("id") == frame["id"] and reply["type"] != "event":
            return reply


def token(content: str) -> dict[str, Any]:
    return {"type": "token", "content": content + ":" + PAYLOAD}


def name(record: dict[str, Any]) -> str:
    content: str = record["event"]["content"]
    return content.partition(":")[0]


async def refused_start(data_dir: Path, status: int | None = None, *extra: str) -> str:
    """What a ``serve`` on ``data_dir`` (and ``extra`` options) that cannot start says:
    its one line, an error; it exits with ``status`` if given (2: a bad configuration,
    not worth a restart)."""
    server = await asyncio.to_thread(
        subprocess.run,
        ServerProcess(data_dir, data_dir.with_suffix(".log"), *extra).argv(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert server.returncode != 0 if status is None else server.returncode == status
    assert "Traceback" not in server.stderr
    lines = server.stderr.strip().splitlines()
    assert len(lines) == 1, server.stderr
    record = json.loads(lines[0])  # --log-format json: every line is JSON, this one too
    assert record["level"] == "error", record
    event: str = record["event"]
    assert event.startswith("cannot start:"), event
    return event


async def test_a_second_server_on_a_locked_directory_exits_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with run_server(data_dir):  # in-process: it only holds the directory's lock
        assert "lock" in (await refused_start(data_dir)).lower()


async def test_a_directory_where_a_session_log_should_be_is_told_in_one_line(
    tmp_path: Path,
) -> None:
    """Not an IsADirectoryError's traceback from the recovery's scan: the path, and what
    to do; once done, the server starts."""
    data_dir = tmp_path / "data"
    async with run_server(data_dir) as server, attach(server, "x", create=True) as (peer, _):
        ack = await roundtrip(peer, {"type": "event", "id": 1, "event": token("kept")})
        assert ack["type"] == "ack"
    log = data_dir / "events" / "x.jsonl"
    log.rename(log.with_suffix(".saved"))
    log.mkdir()
    said = await refused_start(data_dir, status=2)  # as a bad configuration: no restarts
    assert f"{log} is a directory" in said and "move it out of the store's directory" in said
    log.rmdir()
    log.with_suffix(".saved").rename(log)
    with ServerProcess(data_dir, tmp_path / "mended.log") as mended:
        assert await asyncio.to_thread(readyz, mended) == (200, "ready\n")


def readyz(server: ServerProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def test_readyz_is_503_with_the_reason_until_appends_work_again(tmp_path: Path) -> None:
    limited = ServerProcess(tmp_path / "data", tmp_path / "limited.log", preexec_fn=limit_file_size)
    with limited:
        assert await asyncio.to_thread(readyz, limited) == (200, "ready\n")
        async with peer_of(limited, "full", create=True) as peer:
            for i in range(200):
                frame = {"type": "event", "id": i, "key": f"k{i}", "event": token(f"k{i}")}
                if (await roundtrip(peer, frame))["type"] == "error":
                    break
            # No append can succeed on this disk: not ready, and why; the probe (a
            # frame's worth of bytes, written and synced) keeps failing too.
            for _ in range(3):
                status, body = await asyncio.to_thread(readyz, limited)
                assert status == 503, body
                assert body.startswith("not ready: appends are failing"), body
                assert "File too large" in body
                await asyncio.sleep(0.6)
        # An append that works (a small file, under this limit) says appends work again.
        async with peer_of(limited, "other", create=True) as other:
            ack = await roundtrip(other, {"type": "event", "id": 1, "event": token("x")})
            assert ack["type"] == "ack"
        assert await asyncio.to_thread(readyz, limited) == (200, "ready\n")
