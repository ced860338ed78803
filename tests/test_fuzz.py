"""Fuzzing a real server over real connections (hypothesis, bounded examples).

A server subprocess gets random bytes, random JSON, valid frames with mutated fields,
deep nesting, huge numbers and wrong types, on JSON and MessagePack connections, as
first frames and after ``hello``. It must answer each with a reply or an ``error``
(never a close, after hello), or with ``error`` + close 1008 for a bad first frame;
keep serving a bystander connection; and never log a traceback or an error for a peer's
mistake (its JSON log is read back at the end).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.server_process import ServerProcess, assert_no_tracebacks

REPLY_TYPES = {"ack", "history", "events", "pong", "error", "event", "presence"}
ERROR_CODES = {"bad_request", "not_found", "conflict", "too_large"}
_ids = itertools.count(1_000_000)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities included: json.dumps writes them, JSON refuses them
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

TEMPLATES: list[dict[str, Any]] = [
    {"type": "event", "id": 1, "event": {"type": "token", "content": "x"}, "key": "k"},
    {"type": "event", "id": 2, "event": {"type": "tool_start", "tool_call_id": "t",
                                          "tool_name": "n", "arguments": {"a": [1]}}},
    {"type": "event", "id": 3, "event": {"type": "tool_complete", "tool_call_id": "t",
                                          "result": {"success": True, "content": "c"}}},
    {"type": "event", "id": 4, "event": {"type": "complete", "usage": {"prompt_tokens": 1}}},
    {"type": "event", "id": 5, "event": {"type": "custom", "name": "n", "data": {"x": 1}}},
    {"type": "message", "id": 6, "message": {"role": "user", "content": "hi",
                                             "tool_calls": [{"id": "a", "name": "b"}]}},
    {"type": "history", "id": 7, "limit": 5, "before": 3},
    {"type": "events", "id": 8, "after_seq": 0, "limit": 5},
    {"type": "state", "id": 9, "state": "idle"},
    {"type": "ping", "id": 10},
]  # fmt: skip


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    frame = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
    for _ in range(draw(st.integers(1, 3))):
        target = frame
        nested = [k for k, v in frame.items() if isinstance(v, dict)]
        go_deeper = draw(st.booleans())
        if nested and go_deeper:
            target = frame[draw(st.sampled_from(nested))]
        keys = sorted(target)
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and keys:
            del target[draw(st.sampled_from(keys))]
        elif action == "replace" and keys:
            target[draw(st.sampled_from(keys))] = draw(json_values)
        else:
            target[draw(st.text(max_size=8))] = draw(json_values)
    return json.dumps(frame)


@st.composite
def deep_frames(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    if draw(st.booleans()):
        inner = inner[: draw(st.integers(0, len(inner)))]  # truncated
    return '{"type":"event","id":1,"event":{"type":"custom","name":"n","data":' + inner + "}}"


@st.composite
def huge_numbers(draw: st.DrawFn) -> str:
    digits = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=1, max_size=5000)))
    number = draw(
        st.sampled_from([digits, "-" + digits, digits + "e999", "1e-999", "0." + digits, "-0"])
    )
    field = draw(st.sampled_from(["id", "after_seq", "limit", "before"]))
    kind = draw(st.sampled_from(["events", "history", "ping"]))
    return f'{{"type":"{kind}","{field}":{number}}}'


payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    json_values.map(json.dumps),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(
        lambda d: json.dumps({"type": "event", **d})
    ),
    mutated_frames(),
    deep_frames(),
    huge_numbers(),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    process = ServerProcess(base / "data", base / "server.log", "--rate-limit", "0")
    with process:
        yield process
        assert process.stop() == 0  # and it still shuts down cleanly
    # Every line of every log parses, read once the server is stopped: while it runs,
    # a write still under way shows a reader the part of it copied so far (a CI run
    # under load read a cut-off line).
    for path in Path(process.data_dir, "events").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line)
    records = process.log_records()
    # The server's own log: no traceback, no error, for anything a peer sent.
    assert_no_tracebacks(records)


class Peers:
    """The fuzzed connections (JSON and MessagePack), reopened if one ever closes."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.session_id = "fuzz"
        self.conns: dict[bool, ClientConnection] = {}
        self.stack = contextlib.ExitStack()

    def get(self, msgpack: bool) -> ClientConnection:
        conn = self.conns.get(msgpack)
        if conn is None:
            conn = self.stack.enter_context(open_conn(self.server, self.session_id, msgpack))
            send(conn, msgpack, {"type": "hello", "create": True})
            assert recv(conn, msgpack)["type"] == "welcome"
            self.conns[msgpack] = conn
        return conn


def open_conn(server: ServerProcess, session_id: str | None, msgpack: bool) -> ClientConnection:
    return connect(
        server.url(session_id),
        subprotocols=["bamboo.v1.msgpack" if msgpack else "bamboo.v1"],  # type: ignore[list-item]
        open_timeout=5,
        close_timeout=2,
        max_size=None,
    )


def send(conn: ClientConnection, msgpack: bool, frame: dict[str, Any]) -> None:
    conn.send(msgspec.msgpack.encode(frame) if msgpack else json.dumps(frame))


def recv(conn: ClientConnection, msgpack: bool) -> dict[str, Any]:
    data = conn.recv(timeout=5)
    decoded: dict[str, Any] = (
        msgspec.msgpack.decode(data) if msgpack else json.loads(data)  # type: ignore[arg-type]
    )
    return decoded


def as_frame(payload: str | bytes, msgpack: bool) -> str | bytes:
    """The payload as the connection's codec would carry it (MessagePack connections get
    the JSON re-encoded as MessagePack when it parses, else the raw bytes)."""
    if not msgpack:
        return payload
    try:
        return msgspec.msgpack.encode(json.loads(payload))
    except (ValueError, TypeError, OverflowError, RecursionError, msgspec.EncodeError):
        return payload.encode() if isinstance(payload, str) else payload


@pytest.fixture(scope="module")
def peers(server: ServerProcess) -> Iterator[Peers]:
    peers = Peers(server)
    with peers.stack:
        yield peers


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads, msgpack=st.booleans())
def test_after_hello_every_frame_gets_an_answer_and_the_connection_stays(
    peers: Peers, payload: str | bytes, msgpack: bool
) -> None:
    raw = payload.encode() if isinstance(payload, str) else payload
    assume(b"closed" not in raw)  # a state: closed request would end the session
    conn = peers.get(msgpack)
    ping_id = next(_ids)
    try:
        conn.send(as_frame(payload, msgpack))
        send(conn, msgpack, {"type": "ping", "id": ping_id})
        while True:
            reply = recv(conn, msgpack)
            assert reply["type"] in REPLY_TYPES, reply
            if reply["type"] == "error":
                assert reply["code"] in ERROR_CODES, reply
            if reply["type"] == "pong" and reply.get("id") == ping_id:
                break
    except ConnectionClosed:
        peers.conns.pop(msgpack, None)
        raise AssertionError(f"closed with {conn.close_code} after {payload!r:.200}") from None


first_frames = st.one_of(
    payloads,
    st.fixed_dictionaries(
        {"type": st.just("hello")},
        optional={
            "token": json_values,
            "user_id": json_values,
            "title": json_values,
            "create": json_values,
            "last_seq": json_values | st.integers(min_value=-(2**70), max_value=2**70),
            "epoch": json_values,
            "role": st.sampled_from(["client", "agent", "admin"]) | json_values,
            "id": json_values,
        },
    ).map(json.dumps),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=first_frames, msgpack=st.booleans())
def test_a_first_frame_gets_welcome_or_bad_request_and_1008(
    server: ServerProcess, payload: str | bytes, msgpack: bool
) -> None:
    with open_conn(server, None, msgpack) as conn:
        conn.send(as_frame(payload, msgpack))
        reply = recv(conn, msgpack)
        if reply["type"] == "welcome":
            return
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
        with pytest.raises(ConnectionClosed):
            conn.recv(timeout=5)
        assert conn.close_code == 1008


def test_a_bystander_is_served_throughout(server: ServerProcess, peers: Peers) -> None:
    """Runs last in this module: after all the fuzzing, a fresh connection works."""
    with open_conn(server, "bystander", msgpack=False) as conn:
        send(conn, False, {"type": "hello", "create": True})
        assert recv(conn, False)["type"] == "welcome"
        send(conn, False, {"type": "ping", "id": 1})
        assert recv(conn, False) == {"type": "pong", "id": 1}
    for msgpack, conn in peers.conns.items():  # the fuzzed connections are still open
        send(conn, msgpack, {"type": "ping", "id": "last"})
        # (acks may still trail: a pong is not held back behind a durable append)
        while (reply := recv(conn, msgpack)) != {"type": "pong", "id": "last"}:
            assert reply["type"] in REPLY_TYPES, reply
