"""``bamboo-session migrate`` as an operator runs it, in a child process: a SIGKILLed
run finishes when run again and ``--verify`` agrees; a source that a running store
holds is refused with the reason; ``--dry-run`` creates nothing; ``--verify`` names
what differs and exits 1; progress shows as plain lines off a terminal and as live
bars on one; and a client resumes against the new store with ``resumed: true``."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import random
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.forks import ForkedChild
from tests.server_process import ServerProcess
from tests.support import run_server, stream_url

ROOT = Path(__file__).resolve().parent.parent
MODULE = "bamboo_session.server.migrate_cli"
COMMAND = [sys.executable, "-m", MODULE]


def migrate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``migrate ARGS`` as a process, forked once its imports are done (tests/forks.py),
    which were most of its CPU: the tests that need a fresh interpreter (a SIGKILL
    mid-copy, a terminal) start one with ``COMMAND``."""
    child = ForkedChild(["-m", MODULE, *args], cwd=ROOT)
    out, err = child.communicate(timeout=timeout)
    assert child.returncode is not None
    return subprocess.CompletedProcess(args, child.returncode, out.decode(), err.decode())


async def make_source(url: str, sessions: int = 20, events: int = 30) -> None:
    async with await open_storage(url, cleanup_interval=None) as store:

        async def one(i: int) -> None:
            session_id = f"s{i:04d}"
            await store.create_session(Session.new(session_id, user_id=f"u{i % 5}"))
            await store.append_message(session_id, Message.user(f"hi {i}"))
            for chunk in range(0, events, 100):
                count = min(100, events - chunk)
                items = [
                    (AgentEvent.token(f"{i}/{chunk + n}"), f"k{chunk + n}") for n in range(count)
                ]
                await store.append_events(session_id, items)

        await asyncio.gather(*(one(i) for i in range(sessions)))


def copied_sessions(path: Path, events: int = 0) -> int:
    """Sessions in the destination; with ``events``, only those holding that many."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            query = "SELECT count(*) FROM sessions WHERE last_seq >= ?"
            count: int = db.execute(query, (events,)).fetchone()[0]
            return count
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0


def sqlite_url(path: Path) -> str:
    return f"sqlite://{path}"


def test_a_killed_run_finishes_when_run_again(tmp_path: Path) -> None:
    source, target = sqlite_url(tmp_path / "src.db"), sqlite_url(tmp_path / "dst.db")
    # 100 sessions of 150 events: the copy still takes many times the 5 ms between two
    # looks at the destination after the kill's threshold (a third of it at most), and
    # a quarter of the 200 of 300 it was (6 s of CPU to make, copy and verify them).
    events = 150
    asyncio.run(make_source(source + "?durability=os", sessions=100, events=events))
    rng = random.Random(int.from_bytes(os.urandom(4)))
    child = subprocess.Popen(
        [*COMMAND, "--from", source, "--to", target, "--progress", "plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    # Killed once the destination holds a random number of the 100 sessions with all
    # their events (read beside the writer with a plain sqlite3 connection, as WAL
    # allows), so mid-copy. Counting sessions begun instead made the test flaky: the
    # workers copy several at once, so the first few may all still be partial.
    threshold = rng.randrange(5, 30)  # well before the end: a fast copy must not finish first
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if copied_sessions(tmp_path / "dst.db", events=events) >= threshold:
            break
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the first run ended before the kill"

    rerun = migrate("--from", source, "--to", target, "--verify", "--progress", "none")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = rerun.stdout.splitlines()[0]
    found = re.search(r"skipped ([\d,]+)", summary)
    assert found is not None, summary
    skipped = int(found.group(1).replace(",", ""))
    assert skipped > 0, summary  # the killed run had copied some sessions whole
    assert "verify: all 100 sessions match" in rerun.stdout


def test_a_source_a_running_store_holds_is_refused(tmp_path: Path) -> None:
    source = sqlite_url(tmp_path / "src.db")
    asyncio.run(make_source(source, sessions=2))

    async def while_held(url: str) -> subprocess.CompletedProcess[str]:
        async with await open_storage(url):
            return await asyncio.to_thread(
                migrate, "--from", url, "--to", sqlite_url(tmp_path / "dst.db")
            )

    for url in (source, f"jsonl://{tmp_path / 'jsonl'}"):
        result = asyncio.run(while_held(url))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot read the source" in lines[0], result.stderr
        assert "in use" in lines[0] or "locked" in lines[0]
    assert not (tmp_path / "dst.db").exists()


def test_a_dry_run_says_what_it_would_copy_and_creates_nothing(tmp_path: Path) -> None:
    source = sqlite_url(tmp_path / "src.db")
    asyncio.run(make_source(source, sessions=7, events=10))
    result = migrate("--from", source, "--to", sqlite_url(tmp_path / "dst.db"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would copy 7 sessions" in result.stdout and "77 events to copy" in result.stdout
    assert not (tmp_path / "dst.db").exists()


def test_verify_names_what_differs_and_fails(tmp_path: Path) -> None:
    source, target = sqlite_url(tmp_path / "src.db"), sqlite_url(tmp_path / "dst.db")
    asyncio.run(make_source(source, sessions=3, events=5))
    assert migrate("--from", source, "--to", target, "--verify").returncode == 0

    async def change_target() -> None:
        async with await open_storage(target) as store:
            await store.append_event("s0001", AgentEvent.token("only here"))

    asyncio.run(change_target())
    result = migrate("--from", source, "--to", target, "--verify")
    assert result.returncode == 1
    assert "conflict: s0001: the destination is ahead of the source" in result.stdout
    assert "differs: s0001: last_seq: 6 != 7" in result.stdout
    assert "verify: 1 of 3 sessions differ" in result.stdout


def test_progress_off_a_terminal_is_plain_lines(tmp_path: Path) -> None:
    source = sqlite_url(tmp_path / "src.db")
    asyncio.run(make_source(source, sessions=4, events=20))
    result = migrate("--from", source, "--to", sqlite_url(tmp_path / "dst.db"))
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"migrate: 4/4 sessions, 84/84 events, [\d,]+ events/s, ETA 0 s", last), (
        result.stderr
    )
    assert "\x1b[" not in result.stderr


def test_progress_on_a_terminal_is_live_bars(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="pip install 'bamboo-session[progress]'")
    source = sqlite_url(tmp_path / "src.db")
    asyncio.run(make_source(source, sessions=4, events=20))
    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        [*COMMAND, "--from", source, "--to", sqlite_url(tmp_path / "dst.db")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(secondary)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            shown += data
        elif child.poll() is not None:
            break
    os.close(primary)
    assert child.wait(30) == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", shown).decode(errors="replace")
    assert "sessions" in text and "events" in text
    assert "4/4" in text and "84/84" in text


def test_a_store_it_cannot_use_is_named_without_its_password(tmp_path: Path) -> None:
    # "cannot read the source redis://:hunter2@...": the URL was printed whole.
    redis = "redis://:hunter2@127.0.0.1:9/0"  # (nothing listens on port 9)
    for source, target in ((redis, sqlite_url(tmp_path / "t.db")), (redis, redis)):
        result = migrate("--from", source, "--to", target)
        assert result.returncode == 1
        assert "redis://:***@127.0.0.1:9/0" in result.stderr
        assert "hunter2" not in result.stdout + result.stderr


def test_the_command_is_registered_in_the_cli() -> None:
    from bamboo_session.server.cli import build_parser

    args = build_parser().parse_args(["migrate", "--from", "memory://", "--to", "memory://"])
    assert (args.source, args.target, args.verify, args.dry_run) == (
        "memory://",
        "memory://",
        False,
        False,
    )


class StoreServer(ServerProcess):
    """``serve --store URL``: the server on any store."""

    def __init__(self, store: str, log_path: Path) -> None:
        super().__init__(log_path.parent, log_path)
        self.store = store

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bamboo_session.server",
            "serve",
            "--port",
            "0",
            "--store",
            self.store,
            "--log-format",
            "json",
        ]


async def hello(url: str, **fields: object) -> tuple[dict[str, Any], list[int]]:
    """The welcome to a hello with ``fields``, and the seqs of the events replayed."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", **fields}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        seqs = []
        for _ in range(welcome.get("replay", 0)):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "event", frame
            seqs.append(frame["seq"])
        return welcome, seqs


def test_a_client_resumes_against_the_new_store(tmp_path: Path) -> None:
    old, new = f"jsonl://{tmp_path / 'old'}", sqlite_url(tmp_path / "new.db")
    asyncio.run(make_source(old, sessions=1, events=9))  # s0000: a message and 9 tokens

    async def seen_before() -> tuple[str, int]:
        async with await open_storage(old) as store:
            meta = await store.get_metadata("s0000")
            assert meta is not None
            return meta.epoch, meta.last_seq

    epoch, last_seq = asyncio.run(seen_before())
    assert migrate("--from", old, "--to", new, "--verify").returncode == 0

    async def resumed_on_the_new_store() -> None:
        async with run_server(store=new) as server:
            url = stream_url(server, "s0000")
            # A client that saw everything under the old store: resumed, nothing to replay.
            welcome, replayed = await hello(url, last_seq=last_seq, epoch=epoch)
            assert welcome["type"] == "welcome", welcome
            assert (welcome["resumed"], welcome["epoch"], welcome["last_seq"]) == (
                True,
                epoch,
                last_seq,
            )
            assert replayed == []
            # One that saw up to seq 4: resumed, and the rest replayed from the new store.
            welcome, replayed = await hello(url, last_seq=4, epoch=epoch)
            assert welcome["resumed"] is True
            assert replayed == list(range(5, last_seq + 1))

    asyncio.run(resumed_on_the_new_store())


def test_a_second_server_on_the_same_file_fails_at_start(tmp_path: Path) -> None:
    store = sqlite_url(tmp_path / "one.db")
    with StoreServer(store, tmp_path / "first.log"):
        second = StoreServer(store, tmp_path / "second.log")
        with pytest.raises(RuntimeError, match="server exited 1"):
            second.start()
        reasons = [
            json.loads(line)["event"]
            for line in second.log_tail().splitlines()
            if line.startswith("{") and "cannot start" in line
        ]
        assert len(reasons) == 1 and "in use" in reasons[0], second.log_tail()
