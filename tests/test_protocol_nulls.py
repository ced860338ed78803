"""Every optional field of every object a client may send, at every level (frames,
batch items, events, messages, tool calls and results, token usage), decodes the same
with ``null`` as without it, on both codecs; every required field sent as ``null`` is
``bad_request`` with the request's ``id``. The objects are found by walking the
``ClientFrame`` union, so that a field added later is checked too (docs/protocol.md,
"Frames: general rules")."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol import ErrorCode, ProtocolError
from bamboo_session.protocol.codec import JSON, MSGPACK, Codec
from bamboo_session.protocol.frames import ClientFrame

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUEST_ID = 5
TOKEN = {"type": "token", "content": "x"}
MESSAGE = {"role": "user", "content": "x"}
Frame = dict[str, Any]


def as_event(event: Frame) -> Frame:
    return {"type": "event", "id": REQUEST_ID, "event": event}


def as_message(message: Frame) -> Frame:
    return {"type": "message", "id": REQUEST_ID, "message": message}


def frame(fields: Frame) -> Frame:
    return {"id": REQUEST_ID, **fields}


# For each Struct a client may send: objects of it with its required fields only (one
# per field that another required one excludes), and the client frame that carries one.
SAMPLES: dict[str, tuple[list[Frame], Callable[[Frame], Frame]]] = {
    "Hello": ([{"type": "hello"}], frame),
    "PublishEvent": ([{"type": "event", "event": TOKEN}], frame),
    "PublishMessage": ([{"type": "message", "message": MESSAGE}], frame),
    "PublishBatch": ([{"type": "batch", "items": [{"event": TOKEN}]}], frame),
    "BatchItem": (
        [{"event": TOKEN}, {"message": MESSAGE}],
        lambda item: frame({"type": "batch", "items": [item]}),
    ),
    "HistoryRequest": ([{"type": "history"}], frame),
    "EventsRequest": ([{"type": "events"}], frame),
    "StateRequest": ([{"type": "state", "state": "idle"}], frame),
    "Ping": ([{"type": "ping"}], frame),
    "Message": ([MESSAGE], as_message),
    "ToolCall": (
        [{"id": "c", "name": "f"}],
        lambda call: as_message({**MESSAGE, "tool_calls": [call]}),
    ),
    "Token": ([TOKEN], as_event),
    "Thinking": ([{"type": "thinking", "content": "x"}], as_event),
    "MessageEvent": ([{"type": "message", "message": MESSAGE}], as_event),
    "ToolStart": ([{"type": "tool_start", "tool_call_id": "c", "tool_name": "f"}], as_event),
    "ToolComplete": (
        [{"type": "tool_complete", "tool_call_id": "c", "result": {"success": True}}],
        as_event,
    ),
    "ToolResult": (
        [{"success": True}],
        lambda result: as_event({"type": "tool_complete", "tool_call_id": "c", "result": result}),
    ),
    "ToolError": ([{"type": "tool_error", "tool_call_id": "c", "error": "e"}], as_event),
    "Complete": ([{"type": "complete"}], as_event),
    "TokenUsage": ([{}], lambda usage: as_event({"type": "complete", "usage": usage})),
    "ErrorEvent": ([{"type": "error", "message": "m"}], as_event),
    "StateChange": ([{"type": "state_change", "from": "a", "to": "b"}], as_event),
    "Custom": ([{"type": "custom", "name": "n"}], as_event),
}


def client_structs() -> Iterator[msgspec.inspect.StructType]:
    """Every Struct type reachable from ``ClientFrame``, once each."""
    seen: set[type] = set()
    pending: list[msgspec.inspect.Type] = [msgspec.inspect.type_info(ClientFrame)]
    while pending:
        info = pending.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen.add(info.cls)
            yield info
            pending.extend(field.type for field in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            pending.extend(info.types)
        elif isinstance(info, msgspec.inspect.ListType):
            pending.append(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            pending.append(info.value_type)


STRUCTS = sorted(client_structs(), key=lambda info: info.cls.__name__)
OPTIONAL = [
    (info.cls.__name__, field.encode_name)
    for info in STRUCTS
    for field in info.fields
    if not field.required
]
REQUIRED = [
    (info.cls.__name__, field.encode_name)
    for info in STRUCTS
    for field in info.fields
    if field.required
]


def encoded(codec: Codec, obj: Frame) -> bytes | str:
    return msgspec.json.encode(obj).decode() if codec is JSON else msgspec.msgpack.encode(obj)


def test_every_struct_a_client_may_send_has_samples() -> None:
    assert sorted(SAMPLES) == [info.cls.__name__ for info in STRUCTS]
    assert len(OPTIONAL) > 30 and len(REQUIRED) > 15  # the walk found the fields


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
@pytest.mark.parametrize(("struct", "field"), OPTIONAL)
def test_null_for_an_optional_field_is_the_same_as_leaving_it_out(
    codec: Codec, struct: str, field: str
) -> None:
    bases, wrap = SAMPLES[struct]
    base = next(sample for sample in bases if field not in sample)
    left_out = wrap(base)
    if wrap is frame:  # the frame's own field: the request id goes too when it is the one
        left_out.pop(field, None)
    without = codec.decode_request(encoded(codec, left_out))
    with_null = codec.decode_request(encoded(codec, wrap({**base, field: None})))
    assert with_null[0] == without[0]
    # Stored and sent alike: the same bytes back out, defaults left out as ever.
    assert codec.encode(with_null[0]) == codec.encode(without[0])


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
@pytest.mark.parametrize(("struct", "field"), REQUIRED)
def test_null_for_a_required_field_is_a_bad_request(codec: Codec, struct: str, field: str) -> None:
    bases, wrap = SAMPLES[struct]
    base = next(sample for sample in bases if field in sample)
    with pytest.raises(ProtocolError) as info:
        codec.decode_request(encoded(codec, wrap({**base, field: None})))
    assert (info.value.code, info.value.request_id) == (ErrorCode.BAD_REQUEST, REQUEST_ID)


@pytest.mark.parametrize(("struct", "field"), OPTIONAL)
def test_a_copy_with_null_for_an_optional_field_is_the_same_as_leaving_it_out(
    struct: str, field: str
) -> None:
    """``msgspec.structs.replace`` runs ``__post_init__`` as decoding does, so that a
    copy holds what a decoded object would: msgspec does so from 0.21 on (its PR #1000,
    issue #874), which is why pyproject.toml asks for that at least. Before, a copy
    made with ``None`` kept it, against what absent.py promises for every instance."""
    info = next(info for info in STRUCTS if info.cls.__name__ == struct)
    name = next(f.name for f in info.fields if f.encode_name == field)
    bases, _ = SAMPLES[struct]
    left_out = msgspec.convert(next(s for s in bases if field not in s), info.cls)
    copied = msgspec.structs.replace(left_out, **{name: None})
    assert copied == left_out


def test_the_msgspec_floor_is_a_release_whose_replace_runs_post_init() -> None:
    """The test above passes on whatever msgspec this venv has; the floor is what keeps
    an install from resolving to one on which it fails (0.19, 0.20)."""
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    (requirement,) = [r for r in pyproject["project"]["dependencies"] if r.startswith("msgspec")]
    floor = re.fullmatch(r"msgspec>=(\d+)\.(\d+)(?:\.\d+)?", requirement)
    assert floor is not None, requirement
    assert (int(floor[1]), int(floor[2])) >= (0, 21), requirement
