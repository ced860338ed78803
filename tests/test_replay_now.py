"""A resume's replay written at once, with its ``welcome`` (server/replay_now.py), and
every resume the writer task is left to: what a resumer reads either way.

A resume a few events behind, whose replay is one page of the session's ring, goes in
the same write as its welcome, in the flusher's turn, with no writer task: the system
calls of a real server (``strace``, attached to it once it listens; skipped where it is
missing or not allowed) show one write from the welcome's first byte to the last
replayed event's last, and an in-process server starts no writer for that connection.
The way back to the writer is taken by a replay longer than a page, one past the
socket's high-water mark, one read from the store (the ring no longer reaches back),
and one of a peer in debt to its read allowance; a replay longer than the connection's
send queue, or none at all, still needs no writer. Whichever way it goes, a resumer
gets exactly the events it missed, in order, once, and then the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as sync_connect

from bamboo_session.server.app import BambooServer
from tests.parent_death import ending_with_this_process
from tests.replay_support import frame_bounds
from tests.server_process import ServerProcess
from tests.support import Peer, attach, open_peer, run_server, token
from tests.test_jsonl_delete_order import _resumed_calls_joined
from tests.test_wire_floods import masked_frame

KIB = 1024
# The system calls that can put a connection's bytes on its socket.
SOCKET_WRITES = "trace=write,writev,sendmsg,sendto,sendmmsg"
# Guards against a hang, not timings: each is waited for as long as a loaded machine needs.
WAIT = 60.0


# --- A real server's system calls -----------------------------------------------------


@contextlib.contextmanager
def socket_writes_traced(pid: int, trace: Path) -> Iterator[None]:
    """``strace`` attached to process ``pid`` (its main thread: the event loop's, which
    writes every socket) while within: its socket writes go to ``trace``, whole once
    this exits. Skips the test where strace is missing or may not attach."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: apt-get install strace")
    said = trace.with_suffix(".stderr")
    with said.open("wb") as stderr:
        tracer = subprocess.Popen(
            ["strace", "-yy", "-e", SOCKET_WRITES, "-o", str(trace), "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=ending_with_this_process(None),
        )
    try:
        deadline = time.monotonic() + WAIT
        while b"attached" not in said.read_bytes():
            if tracer.poll() is not None:
                pytest.skip(f"strace cannot trace here: {said.read_text().strip()}")
            assert time.monotonic() < deadline, said.read_text()
            time.sleep(0.02)
        yield
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches from the server, which goes on
        tracer.wait(WAIT)


def writes_to(trace: Path, client_port: int) -> list[int]:
    """The bytes each system call wrote to the server's side of the connection from
    ``client_port`` (``-yy`` names a socket by its addresses), in the order they ran."""
    socket_name = re.compile(rf"<TCP:\[[^\]]*->127\.0\.0\.1:{client_port}\]>")
    written = []
    for line in _resumed_calls_joined(trace.read_text().splitlines()):
        if socket_name.search(line):
            result = line.rsplit("=", 1)[1].split()[0]
            assert result.isdigit(), line  # a failed or partial write: not this test's case
            written.append(int(result))
    return written


def raw_resume(port: int, session_id: str, last_seq: int, through: int) -> tuple[bytes, int]:
    """A peer that resumes ``session_id`` after ``last_seq`` on a plain socket and reads
    until the event ``through`` came: everything it read (the HTTP answer first), and
    its own port."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            f"GET /api/v1/stream/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            "".encode()
        )
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += sock.recv(1 << 16)
        hello = {"type": "hello", "last_seq": last_seq}
        sock.sendall(masked_frame(json.dumps(hello).encode(), 0x1))
        while through not in event_seqs(data):
            chunk = sock.recv(1 << 16)
            assert chunk, f"the server hung up: {bytes(data)!r}"
            data += chunk
        return bytes(data), sock.getsockname()[1]


def stream_start(data: bytes) -> int:
    """Where the WebSocket frames begin: past the HTTP answer."""
    return data.index(b"\r\n\r\n") + 4


def text_frames(data: bytes) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Each whole text frame of the stream in ``data``, decoded, with where the frame
    starts and where it ends."""
    at = stream_start(data)
    for opcode, start, end in frame_bounds(data, at):
        if opcode == 0x1:
            yield json.loads(data[start:end]), at, end
        at = end


def event_seqs(data: bytearray | bytes) -> list[int]:
    if b"\r\n\r\n" not in data:
        return []
    return [frame["seq"] for frame, _, _ in text_frames(bytes(data)) if frame["type"] == "event"]


def test_a_resume_from_the_ring_goes_in_the_same_write_as_its_welcome(tmp_path: Path) -> None:
    """The welcome and the three events missed, from its first byte to their last, in
    one system call of a real server (uvloop); the writer task would write the replay
    in a call of its own, after the welcome's."""
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", "--durability", "os") as server:
        with sync_connect(server.url("ring"), open_timeout=WAIT) as agent:
            agent.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(agent.recv(WAIT))["type"] == "welcome"
            for i in range(8):
                agent.send(json.dumps({"type": "event", "id": i, "event": token(f"e{i}")}))
            acks = [json.loads(agent.recv(WAIT)) for _ in range(8)]
            assert [ack["seq"] for ack in acks] == list(range(1, 9))
            trace = tmp_path / "trace"
            assert server.proc is not None
            with socket_writes_traced(server.proc.pid, trace):
                data, client_port = raw_resume(server.port, "ring", 5, 8)
                # The loop's thread stays stopped at a write's end until strace has
                # taken it; a Pong from that thread proves it went on, so no write the
                # resumer read is left "<detached ...>" by a strace slow under load.
                assert agent.ping().wait(WAIT)

    frames = list(text_frames(data))
    assert [frame.get("seq", frame["type"]) for frame, _, _ in frames[:4]] == ["welcome", 6, 7, 8]
    welcome_starts, replay_ends = frames[0][1], frames[3][2]
    written = writes_to(trace, client_port)
    assert written, trace.read_text()  # the HTTP answer's at least: the socket is the one
    ends = [sum(written[: n + 1]) for n in range(len(written))]
    # A write ends where the welcome begins, the next where the replay ends.
    assert welcome_starts in ends and ends[ends.index(welcome_starts) + 1] == replay_ends, (
        f"writes {written}: the welcome starts at {welcome_starts}, the replay ends at "
        f"{replay_ends}"
    )


# --- The same, and every way back to the writer, in process -----------------------------


@contextlib.contextmanager
def tasks_made() -> Iterator[list[asyncio.Task[Any]]]:
    """Every task the running loop makes while within (its names set once made)."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []
    before = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        task = before(loop, coro, **kwargs) if before else asyncio.Task(coro, loop=loop, **kwargs)
        assert isinstance(task, asyncio.Task)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(before)


def writers_of(made: list[asyncio.Task[Any]], connection_id: str) -> int:
    """How many writer tasks (server/connection.py) ``connection_id`` had."""
    return sum(task.get_name() == f"writer:{connection_id}" for task in made)


async def publish(agent: Peer, first_id: int, count: int, size: int) -> None:
    """``count`` events of about ``size`` bytes, pipelined, each acknowledged."""
    for i in range(first_id, first_id + count):
        await agent.send({"type": "event", "id": i, "event": token(f"{i}:" + "e" * size)})
    for _ in range(count):
        await agent.recv_type("ack", timeout=WAIT)


async def read_exactly(viewer: Peer, seqs: list[int]) -> None:
    """``viewer`` reads the events ``seqs``, in that order, each published with id
    seq - 1, and nothing else: the pong of a ping sent after them comes next."""
    events = [await viewer.recv_type("event", timeout=WAIT) for _ in seqs]
    assert [event["seq"] for event in events] == seqs
    assert [event["event"]["content"].split(":")[0] for event in events] == [
        str(seq - 1) for seq in seqs
    ]
    await viewer.send({"type": "ping", "id": "after"})
    assert (await viewer.recv(WAIT))["type"] == "pong"  # no event, no second replay


# (server settings, events published, their size, the resume's last_seq, whether the
# resume's replay is written at once, in the flusher's turn)
RESUMES = [
    pytest.param({}, 10, 100, 4, True, id="one-page-of-the-ring"),
    pytest.param({}, 10, 100, 10, True, id="nothing-to-replay"),
    # The replay is no part of the queue's bounds: 50 events past 8 frames and 4 KiB.
    pytest.param(
        {"send_queue_frames": 8, "send_queue_bytes": 4 * KIB},
        50,
        100,
        0,
        True,
        id="longer-than-the-send-queue",
    ),
    pytest.param({}, 600, 20, 50, False, id="longer-than-a-page"),  # 550 of 512 a page
    pytest.param(
        {"write_limit": 16 * KIB}, 10, 4000, 0, False, id="past-the-sockets-high-water-mark"
    ),
    pytest.param({"ring_size": 16}, 40, 20, 5, False, id="older-than-the-ring"),
]


@pytest.mark.parametrize(("settings", "published", "size", "last_seq", "at_once"), RESUMES)
async def test_a_resume_gets_what_it_missed_then_live_events_whichever_way_it_is_sent(
    settings: dict[str, Any], published: int, size: int, last_seq: int, at_once: bool
) -> None:
    async with run_server(**settings) as server, attach(server, role="agent") as (agent, first):
        session_id, epoch = first["session"]["id"], first["epoch"]
        await publish(agent, 0, published, size)
        with tasks_made() as made:
            async with attach(server, session_id, last_seq=last_seq, epoch=epoch) as (
                viewer,
                welcome,
            ):
                assert welcome["resumed"] and welcome["last_seq"] == published
                assert welcome["replay"] == published - last_seq
                await publish(agent, published, 1, size)  # live: behind the replay
                await read_exactly(viewer, list(range(last_seq + 1, published + 2)))
                writers = writers_of(made, welcome["connection_id"])
    assert (writers == 0) is at_once, f"{writers} writer tasks"


async def test_a_peer_in_debt_to_its_read_allowance_gets_its_replay_from_the_writer() -> None:
    """A peer's first resume, from the ring, goes at once and puts it in debt (a
    sixteenth of 72 KB is 4.5 KB, at 1 KB a second); its next resume waits in the writer
    until the debt is repaid, then gets what it missed, and both get the live event."""
    settings = {"rate_limit_bytes": 1_000, "rate_limit_bytes_burst": 1_000}
    async with run_server(**settings) as server, attach(server, role="agent") as (_, first):
        session_id, epoch = first["session"]["id"], first["epoch"]
        await append(server, session_id, 0, 60, 1_200)  # not charged to any peer
        with tasks_made() as made:
            # Connected beforehand: its hello follows the first replay by one frame.
            async with open_peer(server, session_id) as later:
                async with attach(server, session_id, last_seq=0, epoch=epoch) as (
                    viewer,
                    welcome,
                ):
                    await read_exactly(viewer, list(range(1, 61)))
                    await later.send({"type": "hello", "last_seq": 55, "epoch": epoch})
                    later_welcome = await later.recv()
                    assert later_welcome["replay"] == 5
                    await append(server, session_id, 60, 1, 1_200)
                    await read_exactly(later, list(range(56, 62)))
                    await read_exactly(viewer, [61])
                    assert writers_of(made, welcome["connection_id"]) == 0
                    assert writers_of(made, later_welcome["connection_id"]) >= 1


async def append(
    server: BambooServer, session_id: str, first_id: int, count: int, size: int
) -> None:
    """Events appended in process, as :func:`publish`'s: no connection's bytes."""
    items = [(token(f"{i}:" + "e" * size), None) for i in range(first_id, first_id + count)]
    await server.manager.append_events(session_id, items)
