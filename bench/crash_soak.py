"""Question: does a crash ever lose, duplicate or reorder an acknowledged event?

A server subprocess (``python -m bamboo_session.server serve``, durability ``fsync``)
takes events from several publishers on two sessions while one reader per session
follows live. At a random instant the server gets SIGKILL (no shutdown, no flush, no
checkpoint); it is restarted on the same data directory, publishers reconnect and
re-send every event not acknowledged yet with the same idempotency key, readers resume
with ``last_seq`` + ``epoch``. After the last cycle everything pending is retried, the
server is stopped with SIGTERM, and the files are checked:

- every acknowledged event is in the log exactly once, at the ``seq`` it was acked with;
- each publisher's events are in the log in the order it sent them;
- the log is ``seq`` 1..N with no gap, every line and every checkpoint parses;
- each reader saw 1..N exactly once, in order, across all the crashes.

Those cycles last well under a second, far from the WAL's segment retirement (a
segment is retired, its logs synced and it deleted, after 30 s). So ``--wal-cycles N``
adds N cycles on a server whose WAL retires segments after ``--wal-segment-age``
seconds (0.2 by default), each lasting a few of those ages, so that kills land before,
during and after retirements; the soak watches the WAL directory and reports how many
segments it saw retired while the server ran (``wal_segments_retired``).

Run: ``python -m bench.crash_soak --cycles 50 --wal-cycles 20`` (tests/test_crash.py
runs a few of each). Exit status 0 when every check holds; the figures go to stdout as
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.jsonl import checkpoint

from .soak_server import Server

SESSIONS = ("soak-a", "soak-b")
WINDOW = 32  # events in flight per publisher
# How a killed server shows in a client: a dropped connection, a refused or broken
# handshake, a timeout.
LOST = (WebSocketException, OSError, TimeoutError)


@dataclasses.dataclass
class Publisher:
    """One publisher's record of what it sent and what was acknowledged."""

    name: str
    session_id: str
    next_index: int = 0
    unacked: dict[int, str] = dataclasses.field(default_factory=dict)  # index -> key
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> seq
    duplicates: int = 0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def key(self, index: int) -> str:
        return f"{self.name}-{index}"


@dataclasses.dataclass
class Reader:
    session_id: str
    seen: list[int] = dataclasses.field(default_factory=list)
    contents: list[str] = dataclasses.field(default_factory=list)
    epoch: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await ws.recv())
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


def event_frame(index: int, key: str) -> str:
    event = {"type": "token", "content": key}
    return json.dumps({"type": "event", "id": index, "key": key, "event": event})


def note_reply(pub: Publisher, reply: dict[str, Any]) -> int | None:
    """Records an ack or error; the request index it answered, if it answered one."""
    if reply["type"] == "ack":
        pub.acked[pub.unacked.pop(reply["id"])] = reply["seq"]
        pub.duplicates += bool(reply.get("duplicate"))
        return int(reply["id"])
    if reply["type"] == "error":
        pub.errors.append(reply)
        return int(reply["id"])
    return None


async def publish(server: Server, pub: Publisher) -> None:
    """Re-sends what is unacknowledged, then new events, until the connection drops."""
    async with connect(server.url(pub.session_id), open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="agent")
        window = asyncio.Semaphore(WINDOW)

        async def send(index: int) -> None:
            await window.acquire()
            await ws.send(event_frame(index, pub.unacked[index]))

        async def sender() -> None:
            for index in list(pub.unacked):
                await send(index)
            while True:
                index = pub.next_index
                pub.next_index += 1
                pub.unacked[index] = pub.key(index)
                await send(index)

        sending = asyncio.create_task(sender())
        try:
            while True:
                if note_reply(pub, json.loads(await ws.recv())) is not None:
                    window.release()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, *LOST):
                await sending


async def retry_pending(server: Server, pub: Publisher) -> None:
    """Re-sends every unacknowledged event, a window at a time, until all are acked."""
    async with connect(server.url(pub.session_id), open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="agent")
        pending = list(pub.unacked)
        for start in range(0, len(pending), WINDOW):
            waiting = set(pending[start : start + WINDOW])
            for index in sorted(waiting):
                await ws.send(event_frame(index, pub.unacked[index]))
            while waiting:
                waiting.discard(note_reply(pub, json.loads(await ws.recv())))


async def follow(server: Server, reader: Reader, until_seq: int | None = None) -> None:
    """Reads events, resuming after the last one seen (from the start the first time),
    until the connection drops or ``until_seq`` is reached."""

    def last() -> int:
        return reader.seen[-1] if reader.seen else 0

    async with connect(server.url(reader.session_id), open_timeout=5, close_timeout=1) as ws:
        welcome = await hello(ws, create=True, last_seq=last(), epoch=reader.epoch)
        if not welcome["resumed"]:
            reader.problems.append(f"not resumed after seq {last()}: {welcome}")
        reader.epoch = welcome["epoch"]
        while until_seq is None or last() < until_seq:
            frame = json.loads(await ws.recv())
            if frame["type"] != "event":
                continue
            if frame["seq"] != last() + 1:
                reader.problems.append(f"seq {frame['seq']} after {last()}")
            reader.seen.append(frame["seq"])
            reader.contents.append(frame["event"]["content"])


class WalWatch:
    """How many WAL segments appeared in the data directory while the server ran, and
    how many went away (retired: their logs synced, then deleted), polled as the soak
    runs. (Counted as they come and go: a restarted server may reuse a number.)"""

    def __init__(self, data_dir: Path) -> None:
        self.wal_dir = data_dir / "wal"
        self.seen = 0
        self.retired = 0

    def segments(self) -> set[str]:
        try:
            return {p.name for p in self.wal_dir.iterdir() if p.name.endswith(".wal")}
        except FileNotFoundError:
            return set()

    async def watch(self, seconds: float, every: float = 0.02) -> None:
        deadline = time.monotonic() + seconds
        previous = self.segments()
        self.seen += len(previous)
        while time.monotonic() < deadline:
            await asyncio.sleep(every)
            now = self.segments()
            self.retired += len(previous - now)
            self.seen += len(now - previous)
            previous = now


async def run_cycle(
    server: Server,
    pubs: list[Publisher],
    readers: list[Reader],
    run_for: float,
    wal: WalWatch | None = None,
) -> None:
    tasks = [asyncio.create_task(follow(server, r)) for r in readers]
    await asyncio.sleep(0.02)  # readers attach first, so they see live events too
    tasks += [asyncio.create_task(publish(server, p)) for p in pubs]
    if wal is not None:
        await wal.watch(run_for)
    else:
        await asyncio.sleep(run_for)
    server.kill()
    done, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    for task in done:
        error = task.exception()
        if error is not None and not isinstance(error, LOST):
            raise error


async def soak(
    data_dir: Path,
    log_path: Path,
    cycles: int,
    publishers: int = 4,
    seed: int | None = None,
    wal_cycles: int = 0,
    wal_segment_age: float = 0.2,
) -> dict[str, Any]:
    """Runs ``cycles`` kill-and-restart cycles, then ``wal_cycles`` on a server whose WAL
    retires segments after ``wal_segment_age`` seconds, each lasting 2 to 5 of those,
    then checks everything; the figures, with ``problems`` empty when every check held."""
    rng = random.Random(seed)
    server = Server(data_dir, log_path)
    pubs = [Publisher(f"p{i}", SESSIONS[i % len(SESSIONS)]) for i in range(publishers)]
    readers = [Reader(s) for s in SESSIONS]
    wal = WalWatch(data_dir)
    started = time.monotonic()
    for _ in range(cycles):
        server.start()
        await run_cycle(server, pubs, readers, rng.uniform(0.05, 0.4))
    server.wal_segment_age = wal_segment_age
    for _ in range(wal_cycles):
        server.start()
        run_for = wal_segment_age * rng.uniform(2.0, 5.0)
        await run_cycle(server, pubs, readers, run_for, wal)
    # The last start: retry everything pending, let readers catch up, stop cleanly.
    server.start()
    await asyncio.wait_for(asyncio.gather(*(retry_pending(server, p) for p in pubs)), 60)
    for reader in readers:
        last = max(
            (seq for p in pubs if p.session_id == reader.session_id for seq in p.acked.values()),
            default=0,
        )
        await asyncio.wait_for(follow(server, reader, until_seq=last), timeout=60)
    status = server.stop()
    problems = check(data_dir, pubs, readers)
    if status != 0:
        problems.append(f"server exited {status} on SIGTERM")
    if wal_cycles and not wal.retired:
        problems.append(f"no WAL segment was retired in {wal_cycles} cycles")
    return {
        "cycles": cycles,
        "wal_cycles": wal_cycles,
        "wal_segment_age": wal_segment_age if wal_cycles else None,
        "wal_segments_seen": wal.seen,
        "wal_segments_retired": wal.retired,
        "publishers": publishers,
        "acknowledged": sum(len(p.acked) for p in pubs),
        "duplicate_acks_after_retry": sum(p.duplicates for p in pubs),
        "seconds": round(time.monotonic() - started, 1),
        "problems": problems,
    }


def check(data_dir: Path, pubs: list[Publisher], readers: list[Reader]) -> list[str]:
    problems: list[str] = []
    for path in sorted((data_dir / "sessions").glob("*.json")):
        try:
            checkpoint.read(path)  # a valid slot, whatever the crash cut short
        except StorageError as exc:
            problems.append(f"{path.name} does not parse: {exc}")
    for session_id in SESSIONS:
        raw = (data_dir / "events" / f"{session_id}.jsonl").read_bytes()
        if raw and not raw.endswith(b"\n"):
            problems.append(f"{session_id}: torn last line")
        lines = [json.loads(line) for line in raw.splitlines()]
        seqs = [line["seq"] for line in lines]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{session_id}: seqs are not 1..{len(seqs)}")
        seq_of_key: dict[str, int] = {}
        for line in lines:
            key = line.get("key")
            if key in seq_of_key:
                problems.append(f"{session_id}: key {key} stored twice")
            seq_of_key[key] = line["seq"]
        for pub in (p for p in pubs if p.session_id == session_id):
            if pub.unacked or pub.errors:
                problems.append(f"{pub.name}: {len(pub.unacked)} unacked, errors {pub.errors[:3]}")
            for key, seq in pub.acked.items():
                if seq_of_key.get(key) != seq:
                    problems.append(f"{key}: acked as {seq}, stored as {seq_of_key.get(key)}")
            in_log = [
                seq_of_key[pub.key(i)] for i in range(pub.next_index) if pub.key(i) in seq_of_key
            ]
            if in_log != sorted(in_log):
                problems.append(f"{pub.name}: events stored out of the order sent")
        for reader in (r for r in readers if r.session_id == session_id):
            problems += [f"reader of {session_id}: {p}" for p in reader.problems]
            if reader.seen != seqs:
                problems.append(f"reader of {session_id} saw {len(reader.seen)} of {len(seqs)}")
            elif reader.contents != [line["event"]["content"] for line in lines]:
                problems.append(f"reader of {session_id}: contents differ from the log")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--wal-cycles", type=int, default=20, help="cycles crossing WAL retirement")
    parser.add_argument("--wal-segment-age", type=float, default=0.2, help="seconds")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bamboo-crash-soak-"))
    result = asyncio.run(
        soak(
            work / "data",
            work / "server.log",
            args.cycles,
            args.publishers,
            args.seed,
            args.wal_cycles,
            args.wal_segment_age,
        )
    )
    result["nproc"] = os.cpu_count()
    result["workdir"] = str(work) if args.keep or result["problems"] else None
    print(json.dumps(result, indent=2))
    if not args.keep and not result["problems"]:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
