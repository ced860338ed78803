"""The outbox on its own: order, compaction, overflow and batching of frames."""

from __future__ import annotations

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Pong
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import CloseRequest, Outbox
from bamboo_session.server.read_back import Replay


def frames(count: int) -> list[Outbound]:
    return [Outbound(Pong(id=i)) for i in range(count)]


async def test_items_come_out_in_order_across_compactions() -> None:
    outbox = Outbox("c", "client", limit=5000)
    sent = frames(3000)
    received = []
    for out in sent:
        outbox.push(out)
        if len(outbox) > 10:  # never fully drained: the list compacts as it goes
            received.append(await outbox.get())
    while len(outbox):
        received.append(await outbox.get())
    assert received == sent and outbox.get_nowait() is None


async def test_overflow_drops_the_backlog_and_closes_4429() -> None:
    overflowed: list[CloseRequest] = []
    outbox = Outbox("c", "client", limit=3, on_close=overflowed.append)
    for out in frames(4):
        outbox.push(out)
    item = await outbox.get()
    assert isinstance(item, CloseRequest) and item.code == CloseCode.TOO_SLOW
    assert overflowed == [item] and len(outbox) == 0
    outbox.push(frames(1)[0])  # ignored once closing
    assert len(outbox) == 0


async def test_a_normal_close_comes_after_what_was_queued() -> None:
    outbox = Outbox("c", "client", limit=10)
    queued = frames(2)
    for out in queued:
        outbox.push(out)
    outbox.close(CloseCode.NORMAL, "bye")
    assert [await outbox.get() for _ in range(2)] == queued
    closing = await outbox.get()
    assert isinstance(closing, CloseRequest) and closing.code == CloseCode.NORMAL


def test_take_frames_stops_at_a_replay_and_at_the_limit() -> None:
    outbox = Outbox("c", "client", limit=10)
    first, *rest = frames(4)
    for out in rest[:2]:
        outbox.push(out)
    outbox.push(Replay(0, 5))
    outbox.push(rest[2])
    assert outbox.take_frames(first, limit=10) == [first, *rest[:2]]
    assert isinstance(outbox.get_nowait(), Replay)
    assert outbox.take_frames(rest[2], limit=1) == [rest[2]]
