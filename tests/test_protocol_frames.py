"""Frames (protocol/frames.py): defaults and wire shapes against PROTOCOL.md's tables."""

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol import Message, Role, SessionMetadata, Token
from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.errors import ProtocolError
from bamboo_session.protocol.frames import (
    Ack,
    Acks,
    BatchItem,
    Closed,
    Error,
    EventFrame,
    EventRecord,
    Events,
    EventsRequest,
    Hello,
    History,
    HistoryRequest,
    Ping,
    Pong,
    Presence,
    PublishBatch,
    PublishEvent,
    PublishMessage,
    StateRequest,
    Welcome,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def wire(obj: Any) -> Any:
    return msgspec.json.decode(JSON.encode(obj))


def decode(obj: dict[str, Any]) -> Any:
    return JSON.decode_client(msgspec.json.encode(obj))


# --- Client to server: defaults ------------------------------------------------------


def test_hello_defaults() -> None:
    hello = decode({"type": "hello"})
    assert hello == Hello()
    assert (hello.token, hello.user_id, hello.title, hello.last_seq, hello.epoch) == (None,) * 5
    assert hello.create is False
    assert hello.role == "client"


def test_hello_all_fields() -> None:
    frame = {
        "type": "hello",
        "token": "t",
        "user_id": "u1",
        "title": "My chat",
        "create": True,
        "last_seq": 17,
        "epoch": "k3J9",
        "role": "agent",
    }
    assert decode(frame) == Hello("t", "u1", "My chat", True, 17, "k3J9", "agent")
    assert wire(decode(frame)) == frame


def test_history_and_events_defaults() -> None:
    assert decode({"type": "history"}) == HistoryRequest(id=None, limit=100, before=None)
    assert decode({"type": "events"}) == EventsRequest(id=None, after_seq=0, limit=1000)
    assert decode({"type": "history", "id": 1, "limit": 5, "before": 0}) == HistoryRequest(1, 5, 0)
    assert decode({"type": "events", "id": "x", "after_seq": 9, "limit": 1}) == EventsRequest(
        "x", 9, 1
    )


def test_request_frames() -> None:
    assert decode({"type": "ping", "id": 3}) == Ping(3)
    assert decode({"type": "ping"}) == Ping()
    for state in ("active", "idle", "closed"):
        assert decode({"type": "state", "id": 1, "state": state}) == StateRequest(state, 1)
    assert decode({"type": "event", "id": "a", "event": {"type": "token", "content": "x"}}) == (
        PublishEvent(Token("x"), "a")
    )
    message = {"role": "user", "content": "hi"}
    assert decode({"type": "message", "id": 1, "message": message, "key": "k"}) == (
        PublishMessage(Message(Role.USER, "hi"), 1, "k")
    )


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "state", "id": 1, "state": "disconnected"},
        {"type": "state", "id": 1, "state": "expired"},
        {"type": "state", "id": 1},
        {"type": "hello", "role": "admin"},
        {"type": "hello", "role": ""},
        {"type": "hello", "last_seq": -1},
        {"type": "hello", "create": 1},
        {"type": "history", "id": 1, "limit": 0},
        {"type": "history", "id": 1, "before": -1},
        {"type": "events", "id": 1, "limit": 0},
        {"type": "events", "id": 1, "after_seq": -1},
        {"type": "event", "id": 1},
        {"type": "event", "id": 1, "event": {"type": "token"}},
        {"type": "event", "id": 1, "event": {"type": "nope"}},
        {"type": "message", "id": 1},
        {"type": "message", "id": 1, "message": {"role": "user", "content": "x"}, "key": "k" * 129},
        {"type": "ping", "id": True},
        {"type": "ping", "id": 1.5},
        {"type": "ping", "id": [1]},
    ],
)
def test_bad_client_frames(frame: dict[str, Any]) -> None:
    from bamboo_session.protocol import ProtocolError

    with pytest.raises(ProtocolError):
        decode(frame)


# --- Server to client: exact wire shapes ----------------------------------------------


def test_welcome_shape() -> None:
    metadata = SessionMetadata(id="s", created_at=T0, updated_at=T0, last_activity_at=T0, epoch="e")
    frame = wire(Welcome("c_1", metadata, "e", 42, True, 25))
    assert frame["session"]["id"] == "s"
    del frame["session"]
    assert frame == {
        "type": "welcome",
        "connection_id": "c_1",
        "epoch": "e",
        "last_seq": 42,
        "resumed": True,
        "replay": 25,
    }


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            EventFrame(1, T0, Token("a")),
            {
                "type": "event",
                "seq": 1,
                "ts": "2024-05-01T12:00:00Z",
                "event": {"type": "token", "content": "a"},
            },
        ),
        (Ack(5, 1), {"type": "ack", "id": 1, "seq": 5}),  # duplicate only when true
        (Ack(5, 1, duplicate=True), {"type": "ack", "id": 1, "seq": 5, "duplicate": True}),
        (Ack(5, 0), {"type": "ack", "id": 0, "seq": 5}),  # id 0 is an id
        (Ack(5, ""), {"type": "ack", "id": "", "seq": 5}),
        (Ack(5), {"type": "ack", "seq": 5}),  # the request had no id
        (
            History([], False, "h"),
            {"type": "history", "id": "h", "messages": [], "has_more": False},
        ),
        (
            Events([EventRecord(2, T0, Token("b"))], 2, 9),
            {
                "type": "events",
                "id": 9,
                "events": [
                    {
                        "seq": 2,
                        "ts": "2024-05-01T12:00:00Z",
                        "event": {"type": "token", "content": "b"},
                    }
                ],
                "last_seq": 2,
            },
        ),
        (
            Presence("agent", 2, joined="c_1"),
            {"type": "presence", "joined": "c_1", "role": "agent", "connections": 2},
        ),
        (
            Presence("client", 0, left="c_1"),
            {"type": "presence", "left": "c_1", "role": "client", "connections": 0},
        ),
        (Acks([3, 4], 7), {"type": "acks", "id": 7, "seqs": [3, 4]}),  # no duplicates
        (
            Acks([3, 1, 4], 7, [1]),
            {"type": "acks", "id": 7, "seqs": [3, 1, 4], "duplicates": [1]},
        ),
        (Pong(1), {"type": "pong", "id": 1}),
        (Closed("session closed"), {"type": "closed", "reason": "session closed"}),
        (
            Error("bad_request", "nope", 4),
            {"type": "error", "id": 4, "code": "bad_request", "message": "nope"},
        ),
        (Error("bad_request", "nope"), {"type": "error", "code": "bad_request", "message": "nope"}),
    ],
)
def test_server_frame_shapes(frame: Any, expected: dict[str, Any]) -> None:
    assert wire(frame) == expected


def test_welcome_lists_extensions_only_when_there_are_some() -> None:
    metadata = SessionMetadata(id="s", created_at=T0, updated_at=T0, last_activity_at=T0, epoch="e")
    welcome = Welcome("c_1", metadata, "e", 0, False, 0, ["batch"], 1000)
    assert wire(welcome)["extensions"] == ["batch"] and wire(welcome)["max_batch_items"] == 1000
    old = JSON.decode_server(JSON.encode(Welcome("c_1", metadata, "e", 0, False, 0)))
    assert isinstance(old, Welcome) and (old.extensions, old.max_batch_items) == ([], 0)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_a_batch_frame_decodes_on_both_codecs(codec: Any) -> None:
    frame = {
        "type": "batch",
        "id": 7,
        "items": [
            {"event": {"type": "token", "content": "a"}, "key": "k1"},
            {
                "message": {
                    "role": "user",
                    "content": "hi",
                    "created_at": "2024-05-01T14:00:00+02:00",
                }
            },
            {"event": {"type": "token", "content": "b"}, "key": ""},
        ],
    }
    data = msgspec.json.encode(frame) if codec is JSON else msgspec.msgpack.encode(frame)
    decoded = codec.decode_client(data)
    assert isinstance(decoded, PublishBatch) and decoded.id == 7
    first, second, third = decoded.items
    assert first == BatchItem(event=Token("a"), key="k1")
    assert second.event is None and second.message is not None and second.key is None
    assert second.message.created_at == T0  # brought to UTC, as on a message frame
    assert third.key == ""  # an empty key is a key like any other


@pytest.mark.parametrize(
    ("items", "says"),
    [
        ([], "at least one item"),
        ([{}], "items[0]: an item holds exactly one of event and message"),
        ([{"event": {"type": "custom", "name": "n", "data": float("inf")}}], "items[0]: value"),
    ],
)
def test_bad_batches_name_the_item(items: list[Any], says: str) -> None:
    data = msgspec.msgpack.encode({"type": "batch", "id": "b", "items": items})
    with pytest.raises(ProtocolError) as refused:
        MSGPACK.decode_client(data)
    assert says in refused.value.message and refused.value.request_id == "b"


def test_raw_event_is_spliced_as_is() -> None:
    raw = msgspec.Raw(b'{"type":"token","content":"pre-encoded"}')
    assert JSON.encode(EventFrame(7, T0, raw)) == (
        b'{"type":"event","seq":7,"ts":"2024-05-01T12:00:00Z",'
        b'"event":{"type":"token","content":"pre-encoded"}}'
    )
    assert JSON.decode_server(JSON.encode(EventFrame(7, T0, raw))) == EventFrame(
        7, T0, Token("pre-encoded")
    )
