"""A resumer whose replay takes longer than its send queue lasts at the live rate is
not closed as too slow to read: the live events that would overflow the queue behind
the replay are read as part of it (server/outbox.py, ``Outbox.push``), so a reader
that keeps up with what it is sent catches up, on every store. Before, it was closed
with 4429 (``too slow to read: send queue full``) however fast it read, and on Redis a
reader beyond the ring (a replay read from the store, about 40 ms a page on a busy
machine) never caught up (bench/chaos_soak.py: some 1,200 of those closes in two
minutes, where JSONL saw 9). A reader that stops reading is still closed, at its
page's deadline (tests/test_replay_server_slow_resumers.py), and so is one whose
replay falls behind the session through read-backs by more than sixteen pages, net of
what it sent meanwhile (server/read_back.py, ``ReadBackLag``): a reader slower than
the session, or an in-process receiver dropped unread (reviewer r345), is closed with
4429 and resumes, rather than lagging without end."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent, Token
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Presence
from bamboo_session.protocol.models import StoredEvent
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.outbound import EventOutbound, Outbound
from bamboo_session.server.read_back import READ_BACK_LAG_EVENTS, Replay, read_back
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token

QUEUE = 16  # frames: the live events published during the replay are many times more
BEFORE, LIVE = 200, 120
CONTENT = "x" * 4000
# The peer's read allowance (a sixteenth of a replay's bytes): about 50 kB for the
# replay of 200 events of 4 kB, at 20 kB a second, so it takes some 1.5 s, and the live
# events all come while it waits.
ALLOWANCE: dict[str, Any] = {"rate_limit_bytes": 20_000, "rate_limit_bytes_burst": 20_000}


@pytest.fixture(params=["jsonl", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "jsonl":
        return {}
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return {"store": redis_server.url(prefix=prefix_for(tmp_path))}


async def test_live_events_behind_a_slow_replay_are_read_with_it(store: dict[str, Any]) -> None:
    """Every event once, in order, and the presence frames of peers that came and went
    meanwhile each in its place among them: after the events appended before it,
    before the others."""
    config = {"send_queue_frames": QUEUE, **ALLOWANCE, **store}
    async with run_server(**config) as server:
        async with attach(server, role="agent") as (_, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
        await server.manager.append_events(session_id, [(token(CONTENT), None)] * BEFORE)
        async with attach(server, session_id, last_seq=0, epoch=epoch) as (reader, resumed):
            assert (resumed["resumed"], resumed["replay"]) == (True, BEFORE)
            reading = asyncio.create_task(read_all(reader))
            expected: list[tuple[str, int]] = []  # (who came, the last seq before it)
            for seq in range(BEFORE + 1, BEFORE + LIVE + 1):  # one at a time, as live
                await server.manager.append_events(session_id, [(token(CONTENT), None)])
                if seq % 40 == 20:  # three, each joined then left: 6 frames of 16
                    async with attach(server, session_id) as (_, came):
                        expected.append((came["connection_id"], seq))
            seqs, presence = await asyncio.wait_for(reading, 60)
            assert seqs == list(range(1, BEFORE + LIVE + 1))
            assert [p for p in presence if p[0] in dict(expected)] == expected
            assert reader.ws.close_code is None
        metrics = server.metrics.render().decode()
        assert "bamboo_send_queue_drops_total 0.0" in metrics


async def read_all(reader: Peer) -> tuple[list[int], list[tuple[str, int]]]:
    """The seqs of the events read, and who each presence frame says came, with the
    seq of the event read last before it."""
    seqs: list[int] = []
    presence: list[tuple[str, int]] = []
    while len(seqs) < BEFORE + LIVE:
        frame = await reader.recv(timeout=20)
        if frame["type"] == "event":
            seqs.append(frame["seq"])
        elif frame["type"] == "presence" and frame.get("joined"):
            presence.append((frame["joined"], seqs[-1] if seqs else 0))
    return seqs, presence


def frames_of(queue: list[Any]) -> list[Any]:
    """A queue as ("event", seq), ("replay", after, through) and "presence"."""
    return [
        ("event", item.seq)
        if isinstance(item, EventOutbound)
        else ("replay", item.after, item.through)
        if isinstance(item, Replay)
        else "presence"
        for item in queue
    ]


def test_read_back_keeps_every_frame_in_its_place() -> None:
    """Runs in order become replays (the first joins the one being sent), the other
    frames stay between them, and from an event out of order on nothing changes."""
    now = datetime.now(UTC)

    def event(seq: int) -> EventOutbound:
        return Outbound.for_event(StoredEvent(seq, now, Token("t")))

    presence = Outbound(Presence(role="client", connections=2, joined="c_x"))
    sent = Replay(0, 10)
    queue = [event(11), event(12), presence, event(13), presence, event(14), event(16)]
    kept, events, freed = read_back(queue, sent)
    assert (sent.after, sent.through) == (0, 12)
    assert frames_of(kept) == [
        "presence",
        ("replay", 12, 13),
        "presence",
        ("replay", 13, 14),
        ("event", 16),  # after a hole (a publisher's own event): as it was
    ]
    assert events == 4
    assert freed == sum(e.event_size for e in queue[:2] + queue[3:4] + queue[5:6])
    # Read back again: a replay queued already is extended, not one more made.
    kept, events, freed = read_back([presence, Replay(12, 13), event(14), event(15)], Replay(0, 12))
    assert frames_of(kept) == ["presence", ("replay", 12, 15)] and (events, freed > 0) == (2, True)


async def test_a_receiver_dropped_unread_mid_replay_is_still_closed_as_too_slow(
    tmp_path: Path,
) -> None:
    """Reviewer r345: connect_session "may drop its receiver unread; its queue is
    bounded all the same". A receiver dropped in the middle of its replay had every
    live event that would overflow its queue move the replay's end on, and stayed
    attached for as long as the session lived. Its read-backs are made up by no page
    now, so once they pass sixteen pages' worth it is closed with 4429."""
    queue = 8
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    config = SessionManagerConfig(ring_size=0, send_queue_frames=queue)
    async with storage, await SessionManager.new(config, storage) as manager:
        session = await manager.create_session()
        tokens = [(AgentEvent.token(f"t{i}"), None) for i in range(600)]
        await manager.append_events(session.id, tokens)
        receiver = await manager.connect_session(session.id, last_seq=0)
        first = await asyncio.wait_for(receiver.recv(), 5)
        assert first is not None and first.seq == 1
        # The caller drops it here, unread, mid-replay; the session goes on.
        outbox = receiver.outbox
        for i in range(queue * 10):  # r345's count: read back, so not closed yet
            await manager.append_event(session.id, AgentEvent.token(f"live{i}"))
        assert outbox.closing is None and len(outbox) <= queue
        live = [(AgentEvent.token("more"), None)] * 50
        for _ in range(READ_BACK_LAG_EVENTS // len(live) + 1):
            await manager.append_events(session.id, live)
        assert outbox.closing is not None and outbox.closing.code == CloseCode.TOO_SLOW, (
            f"a receiver dropped mid-replay still attached {READ_BACK_LAG_EVENTS + 130} "
            f"live events past a queue of {queue}: queued={len(outbox)}"
        )


SLOW_READER_CAP = 8000  # events appended at most, waiting for the close


async def test_a_reader_slower_than_the_session_is_closed_and_resumes_with_every_event_once(
    store: dict[str, Any],
) -> None:
    """A resumer held back by its read allowance (about 640 kB/s of replay pages, some
    160 events a second) on a session appended to several times faster, even on a
    loaded machine (at 1.6 MB/s, a machine at load 15 appended no faster than the
    reader read, and the reader never fell behind): its replay, with the live events read back
    into it, fell further behind for as long as the session went on. Now it is closed
    with 4429 once its read-backs are more than sixteen pages (4 MiB here) ahead of the
    pages it was sent, and its resume gets every event once, in order."""
    allowance = {"rate_limit_bytes": 40_000, "rate_limit_bytes_burst": 20_000}
    async with run_server(send_queue_frames=QUEUE, **allowance, **store) as server:
        async with attach(server, role="agent") as (_, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
        await server.manager.append_events(session_id, [(token(CONTENT), None)] * BEFORE)
        async with attach(server, session_id, last_seq=0, epoch=epoch) as (reader, _):
            reading = asyncio.create_task(reader.closed(timeout=20))
            appended, deadline = BEFORE, asyncio.get_running_loop().time() + 30
            while not reading.done() and appended < SLOW_READER_CAP:
                assert asyncio.get_running_loop().time() < deadline
                await server.manager.append_events(session_id, [(token(CONTENT), None)] * 16)
                appended += 16
            assert appended < SLOW_READER_CAP, "a reader slower than the session never closed"
            code, frames = await asyncio.wait_for(reading, 20)
            assert (code, reader.ws.close_reason) == (4429, "too slow to read: send queue full")
        seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
        assert seqs == list(range(1, len(seqs) + 1))
        async with attach(server, session_id, last_seq=seqs[-1], epoch=epoch) as (reader, back):
            assert (back["resumed"], back["replay"]) == (True, appended - seqs[-1])
            while len(seqs) < appended:
                frame = await reader.recv(timeout=20)
                if frame["type"] == "event":
                    seqs.append(frame["seq"])
        assert seqs == list(range(1, appended + 1))
