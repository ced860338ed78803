"""A resumer whose replay takes longer than its send queue lasts at the live rate is
not closed as too slow to read: the live events that would overflow the queue behind
the replay are read as part of it (server/outbox.py, ``Outbox.push``), so a reader
that keeps up with what it is sent catches up, on every store. Before, it was closed
with 4429 (``too slow to read: send queue full``) however fast it read, and on Redis a
reader beyond the ring (a replay read from the store, about 40 ms a page on a busy
machine) never caught up (bench/chaos_soak.py: some 1,200 of those closes in two
minutes, where JSONL saw 9). A reader that stops reading is still closed, at its
page's deadline (tests/test_replay_server_slow_resumers.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.frames import Presence
from bamboo_session.protocol.models import StoredEvent
from bamboo_session.server.outbound import EventOutbound, Outbound
from bamboo_session.server.read_back import Replay, read_back
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
    kept, freed = read_back(queue, sent)
    assert (sent.after, sent.through) == (0, 12)
    assert frames_of(kept) == [
        "presence",
        ("replay", 12, 13),
        "presence",
        ("replay", 13, 14),
        ("event", 16),  # after a hole (a publisher's own event): as it was
    ]
    assert freed == sum(e.event_size for e in queue[:2] + queue[3:4] + queue[5:6])
    # Read back again: a replay queued already is extended, not one more made.
    kept, freed = read_back([presence, Replay(12, 13), event(14), event(15)], Replay(0, 12))
    assert frames_of(kept) == ["presence", ("replay", 12, 15)] and freed > 0
