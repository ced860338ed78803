"""The client's outgoing publishes (protocol/client/outgoing.py): encoded once, framed
alone or in a batch that the server's decoder reads back as sent, and grouped in order
by count and bytes; what the server would refuse is never batched. No I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message, Role
from bamboo_session.protocol.client.outgoing import Publish, batch_frame, plan, single_frame
from bamboo_session.protocol.client.pending import PendingRequests
from bamboo_session.protocol.codec import JSON, MSGPACK, Codec
from bamboo_session.protocol.frames import (
    BatchItem,
    HistoryRequest,
    PublishBatch,
    PublishEvent,
    PublishMessage,
)

CODECS = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def event(request_id: int, text: str = "x", key: str = "k") -> PublishEvent:
    return PublishEvent(AgentEvent.token(text), id=request_id, key=f"{key}{request_id}")


@CODECS
def test_a_lone_publish_is_the_frame_it_always_was(codec: Codec) -> None:
    frame = event(3, "hi")
    assert codec.decode_client(single_frame(codec, Publish(codec, frame))) == frame
    message = PublishMessage(Message.assistant("said"), id=4, key="m4")
    assert codec.decode_client(single_frame(codec, Publish(codec, message))) == message


@CODECS
def test_a_batch_reads_back_as_its_publishes_in_order(codec: Codec) -> None:
    offset = timezone(timedelta(hours=2))
    message = Message(
        role=Role.USER, content="m", created_at=datetime(2024, 5, 1, 14, tzinfo=offset)
    )
    publishes = [
        Publish(codec, event(1, "a")),
        Publish(codec, PublishMessage(message, id=2, key="m2")),
        Publish(codec, event(3, "b")),
    ]
    frame = batch_frame(codec, 9, publishes)
    if codec is JSON:  # times travel in UTC (PROTOCOL.md "Data")
        assert b'"created_at":"2024-05-01T12:00:00Z"' in frame
    decoded = codec.decode_client(frame)
    assert decoded == PublishBatch(
        [
            BatchItem(event=AgentEvent.token("a"), key="k1"),
            BatchItem(message=message, key="m2"),
            BatchItem(event=AgentEvent.token("b"), key="k3"),
        ],
        id=9,
    )
    read = decoded.items[1].message
    assert read is not None and read.created_at is not None
    assert read.created_at.utcoffset() == timedelta(0)  # the server reads it in UTC
    assert message.created_at.utcoffset() == timedelta(hours=2)  # the caller's is as it was


def test_what_the_server_would_refuse_is_not_batchable() -> None:
    assert Publish(JSON, event(1)).batchable
    not_portable = PublishEvent(AgentEvent.custom("n", float("nan")), id=2, key="k")
    assert not Publish(JSON, not_portable).batchable
    assert not Publish(JSON, PublishEvent(AgentEvent.token("x"), id=3, key="k" * 129)).batchable
    with pytest.raises(TypeError):  # what no codec encodes fails its caller, at once
        Publish(JSON, PublishEvent(AgentEvent.custom("n", {"a": object()}), id=4, key="k"))


def queue(loop: asyncio.AbstractEventLoop, frames: list[Any]) -> list[Any]:
    book = PendingRequests()
    return [
        book.add(book.next_id(), frame, loop.create_future(), isinstance(frame, Publish))
        for frame in frames
    ]


def shape(groups: Iterator[list[Any]]) -> list[list[int]]:
    return [[pending.frame.id for pending in group] for group in groups]


def test_plan_groups_runs_of_publishes_in_order(loop: asyncio.AbstractEventLoop) -> None:
    frames: list[Any] = [Publish(JSON, event(i)) for i in range(1, 6)]
    frames.insert(2, HistoryRequest(id=99))
    frames.insert(4, Publish(JSON, event(98, key="k" * 200)))  # refused alone
    pending = queue(loop, frames)
    assert shape(plan(pending, max_items=100)) == [[1, 2], [99], [3], [98], [4, 5]]
    assert shape(plan(pending, max_items=0)) == [[1], [2], [99], [3], [98], [4], [5]]
    assert shape(plan(pending[:2], max_items=1)) == [[1], [2]]


def test_plan_bounds_a_batch_by_count_and_bytes(loop: asyncio.AbstractEventLoop) -> None:
    small = queue(loop, [Publish(JSON, event(i)) for i in range(1, 8)])
    assert shape(plan(small, max_items=3)) == [[1, 2, 3], [4, 5, 6], [7]]
    large = queue(loop, [Publish(JSON, event(i, "x" * 1000)) for i in range(1, 6)])
    assert shape(plan(large, max_items=100, max_bytes=2500)) == [[1, 2], [3, 4], [5]]
    assert shape(plan(large, max_items=100, max_bytes=500)) == [[1], [2], [3], [4], [5]]
