"""Frames with leap seconds in the codecs (JSON and MessagePack): a frame that holds one
is decoded as the frame with its reading (the last microsecond before it ends), with
whatever else in it checked, refused or ignored as in any frame; members named twice or
thrice on the way to a time are read as the typed decoder reads them (the last counts,
the others are checked); frames drawn by Hypothesis read the same; escaped characters
change nothing; and reading one decodes no value the frame would not."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo_session.protocol.codec import JSON, MSGPACK, Codec
from bamboo_session.protocol.errors import ProtocolError
from bamboo_session.protocol.frames import PublishMessage
from tests.leap_seconds_support import ITS_LAST_MICROSECOND, LEAP, NOT_A_LEAP_SECOND, message


def leap_frames(created_at: str) -> dict[str, Any]:
    """Frames whose messages' time is ``created_at``, each with something else a peer
    may get wrong or leave for the server to ignore (LEAP in free-form values)."""
    sent = message("x", created_at, metadata={"at": LEAP})
    sent_in_an_event = {"type": "message", "message": sent}
    return {
        "unknown fields": {"type": "message", "message": {**sent, "extra": [LEAP]}, "x": 1},
        "a key too long": {"type": "message", "message": sent, "key": "k" * 129},
        "an id out of range": {"type": "message", "id": 2**63, "message": sent},
        "a content of another type": {"type": "message", "message": {**sent, "content": 5}},
        "an event of type message": {"type": "event", "event": sent_in_an_event},
        "an event of another type": {
            "type": "event",
            "event": {"type": "custom", "name": "n", "data": {"message": message("x", LEAP)}},
        },
        "a batch": {"type": "batch", "items": [{"message": sent}, {"event": {"type": "x"}}]},
        "a batch with an item of no object": {"type": "batch", "items": [{"message": sent}, 5]},
        "a batch with both in an item": {
            "type": "batch",
            "items": [{"message": sent, "event": sent_in_an_event}],
        },
    }


def outcome(codec: Codec, frame: Any) -> tuple[str, Any]:
    """What the codec makes of ``frame``: the frame decoded and what its values cost
    beyond its bytes, or the error (a time in it named as it is read). (Its weight
    queued is a bound from its bytes for a small frame: 9 times them in MessagePack.)"""
    data = encoded(codec, frame)
    try:
        decoded, cost, _weight = codec.decode_weighed(data)
    except ProtocolError as refusal:
        return "refused", (refusal.message, refusal.request_id)
    return "decoded", (msgspec.to_builtins(decoded), cost - len(data))


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_a_frame_with_a_leap_second_is_decoded_as_the_frame_with_its_reading(codec: Codec) -> None:
    # Anything else in it is checked, refused or ignored as in any frame: it is decoded
    # by the codec's own decoder once its times are read, not converted from objects.
    as_read = leap_frames(ITS_LAST_MICROSECOND)
    for name, frame in leap_frames(LEAP).items():
        assert outcome(codec, frame) == outcome(codec, as_read[name]), name


class Members(list[tuple[str, Any]]):
    """An object as its members in order, which may name a key twice (a dict cannot)."""


def encoded(codec: Codec, value: Any) -> str | bytes:
    """``value`` in ``codec``'s encoding, each :class:`Members` an object as it is."""
    return _json(value).decode() if codec is JSON else _msgpack(value)


def _json(value: Any) -> bytes:
    if isinstance(value, Members):
        members = (msgspec.json.encode(name) + b":" + _json(each) for name, each in value)
        return b"{" + b",".join(members) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_json(each) for each in value) + b"]"
    if isinstance(value, dict):
        return _json(Members(value.items()))
    return msgspec.json.encode(value)


def _msgpack(value: Any) -> bytes:
    if isinstance(value, Members):
        assert len(value) < 16  # a fixmap
        members = (msgspec.msgpack.encode(name) + _msgpack(each) for name, each in value)
        return bytes([0x80 | len(value)]) + b"".join(members)
    if isinstance(value, list):
        assert len(value) < 16  # a fixarray
        return bytes([0x90 | len(value)]) + b"".join(_msgpack(each) for each in value)
    if isinstance(value, dict):
        return _msgpack(Members(value.items()))
    return msgspec.msgpack.encode(value)


def frames_naming_twice(created_at: str) -> dict[str, Members]:
    """Frames in which a member on the way to a message's time is named twice
    (docs/protocol.md, "Frames: general rules": the last counts, but ``type`` named
    twice with two values is refused), the time ``created_at`` in the last."""
    sent = message("x", created_at)
    other = message("y", "2020-01-01T00:00:00Z")
    in_an_event = Members([("type", "message"), ("message", sent)])
    token = Members([("type", "token"), ("content", "t")])
    return {
        "type, two values": Members([("type", "message"), ("message", sent), ("type", "ping")]),
        "type, one value": Members([("type", "message"), ("message", sent), ("type", "message")]),
        "an event's type, two values": Members(
            [
                ("type", "event"),
                ("event", Members([*token, ("message", sent), ("type", "message")])),
            ]
        ),
        "an item's event's type, two values": Members(
            [
                ("type", "batch"),
                ("items", [Members([("event", Members([*token, *in_an_event]))])]),
            ]
        ),
        "created_at": Members(
            [("type", "message"), ("message", Members([*other.items(), *sent.items()]))]
        ),
        "message": Members([("type", "message"), ("message", other), ("message", sent)]),
        "event, the first with no type": Members(
            [("type", "event"), ("event", Members([("content", "x")])), ("event", in_an_event)]
        ),
        "items, the first no list": Members(
            [("type", "batch"), ("items", 5), ("items", [Members([("message", sent)])])]
        ),
        "an item's message": Members(
            [("type", "batch"), ("items", [Members([("message", other), ("message", sent)])])]
        ),
    }


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_a_member_named_twice_on_the_way_is_read_as_without_a_leap_second(codec: Codec) -> None:
    # The last occurrence counts, as the typed decoder reads it; and what it refuses
    # of the others (a `type` of two values, an earlier member of the wrong shape) is
    # refused, though the frame is decoded again from its members' last occurrences.
    as_read = frames_naming_twice(ITS_LAST_MICROSECOND)
    for name, frame in frames_naming_twice(LEAP).items():
        assert outcome(codec, frame) == outcome(codec, as_read[name]), name


def frames_with_an_occurrence_between(created_at: str) -> dict[str, Members]:
    """Frames in which a member on the way to a message's time is named three times,
    ``created_at`` in the first and the last: the one between, which the last
    replaces, is of the wrong shape (refused by the typed decoder), or a time too."""
    sent = message("x", created_at)
    wrong = {"role": "user", "content": 5}
    in_an_event = {"type": "message", "message": sent}

    def thrice(name: str, between: Any, first: Any = sent) -> list[tuple[str, Any]]:
        return [(name, first), (name, between), (name, first)]

    def batch(item: Members) -> Members:
        return Members([("type", "batch"), ("id", 7), ("items", [item])])

    token = {"type": "token", "content": 5}
    return {
        "message": Members([("type", "message"), ("id", 7), *thrice("message", wrong)]),
        "message, a time between": Members(
            [("type", "message"), *thrice("message", message("y", created_at))]
        ),
        "message, no time between": Members(
            [("type", "message"), ("id", 7), *thrice("message", message("y", "not a time"))]
        ),
        "event": Members([("type", "event"), ("id", 7), *thrice("event", token, in_an_event)]),
        "items": Members(
            [
                ("type", "batch"),
                ("id", 7),
                *thrice("items", [{"message": wrong}], [{"message": sent}]),
            ]
        ),
        "an item's message": batch(Members(thrice("message", wrong))),
        "an item's event": batch(Members(thrice("event", token, in_an_event))),
        "an item's event's message": batch(
            Members([("event", Members([("type", "message"), *thrice("message", wrong)]))])
        ),
    }


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_an_occurrence_after_a_leap_second_is_checked_as_the_typed_decoder_does(
    codec: Codec,
) -> None:
    # The typed decoder stops at the first leap second; what follows it, an occurrence
    # that a later one replaces included, is checked as in a frame without one (each
    # of these was taken: only the last occurrences were decoded again).
    as_read = frames_with_an_occurrence_between(ITS_LAST_MICROSECOND)
    for name, frame in frames_with_an_occurrence_between(LEAP).items():
        read = outcome(codec, as_read[name])
        assert outcome(codec, frame) == read, name
        assert read[0] == ("decoded" if name == "message, a time between" else "refused"), name


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_a_leap_second_named_before_the_member_that_counts_is_read_and_replaced(
    codec: Codec,
) -> None:
    # As in any frame, the last occurrence counts and every other is checked: a leap
    # second in an earlier one is a time (it was refused as an invalid one), and a
    # second 60 that is no leap second is refused there too.
    later = message("y", "2020-01-01T00:00:00Z")
    for earlier, expected in ((LEAP, "decoded"), (NOT_A_LEAP_SECOND, "refused")):
        frame = Members(
            [("type", "message"), ("message", message("x", earlier)), ("message", later)]
        )
        as_read = Members(
            [
                ("type", "message"),
                ("message", message("x", ITS_LAST_MICROSECOND)),
                ("message", later),
            ]
        )
        got = outcome(codec, frame)
        assert got[0] == expected, earlier
        if expected == "decoded":
            assert got == outcome(codec, as_read)
            assert got[1][0]["message"]["content"] == "y"
        else:
            refused = "Invalid RFC3339 encoded datetime - at `$.message.created_at`"
            assert got == ("refused", (refused, None))


class Time:
    """Where a drawn frame holds a time: ``sent`` as sent, ``read`` as it is read."""

    def __init__(self, sent: Any) -> None:
        self.sent = sent
        self.read = ITS_LAST_MICROSECOND if sent == LEAP else sent


def rendered(value: Any, read: bool) -> Any:
    """A drawn frame with each :class:`Time` as sent, or as read."""
    if isinstance(value, Time):
        return value.read if read else value.sent
    if isinstance(value, Members):
        return Members((name, rendered(each, read)) for name, each in value)
    if isinstance(value, list):
        return [rendered(each, read) for each in value]
    return value


def names_a_time_twice(value: Any) -> bool:
    if isinstance(value, Members):
        names = [name for name, _ in value]
        if names.count("created_at") > 1:
            return True
        return any(names_a_time_twice(each) for _, each in value)
    return isinstance(value, list) and any(names_a_time_twice(each) for each in value)


def members(
    first: list[tuple[str, Any]], *drawn: st.SearchStrategy[tuple[str, Any]]
) -> st.SearchStrategy[Members]:
    """Objects of the members ``first``, then up to 4 drawn from ``drawn`` (a name
    given twice, at times)."""
    return st.lists(st.one_of(*drawn), max_size=4).map(lambda more: Members([*first, *more]))


times = st.sampled_from(
    [LEAP, LEAP, LEAP, NOT_A_LEAP_SECOND, "2020-01-01T00:00:00Z", "x", 5, None]
).map(Time)
messages = members(
    [("role", "user"), ("content", "c")],
    st.tuples(st.just("created_at"), times),
    st.tuples(st.just("created_at"), times),
    st.tuples(st.just("role"), st.sampled_from(["user", "x"])),
    st.tuples(st.just("content"), st.sampled_from(["c", 5])),
    st.tuples(st.just("metadata"), st.sampled_from([{}, 5, {"k": ":60"}])),
)
events = members(
    [("type", "message")],
    st.tuples(st.just("message"), messages),
    st.tuples(st.just("message"), messages),
    st.tuples(st.just("type"), st.sampled_from(["message", "token", "custom"])),
    st.tuples(st.just("content"), st.sampled_from(["t", 5])),
)
items = members(
    [],
    st.tuples(st.just("event"), events),
    st.tuples(st.just("message"), messages),
    st.tuples(st.just("key"), st.sampled_from(["k", "k" * 129])),
)
frames = st.sampled_from(["message", "event", "batch"]).flatmap(
    lambda kind: members(
        [("type", kind), ("id", 7)],
        st.tuples(st.just("message"), messages),
        st.tuples(st.just("event"), events),
        st.tuples(st.just("items"), st.lists(items, min_size=1, max_size=3)),
        st.tuples(st.just("type"), st.sampled_from(["message", "event", "batch", "ping"])),
    )
)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(frame=frames)
def test_a_drawn_frame_with_leap_seconds_reads_as_the_frame_with_their_reading(
    codec: Codec, frame: Members
) -> None:
    # Nothing but a protocol error is raised, and a frame taken is the frame with each
    # leap second's reading; one refused may name another fault (documented), and of
    # created_at named twice in one message only the last is looked at.
    sent = outcome(codec, rendered(frame, read=False))
    read = outcome(codec, rendered(frame, read=True))
    if sent[0] == read[0] == "decoded":
        assert sent == read
    elif not names_a_time_twice(frame):
        assert sent[0] == read[0] == "refused"
        assert sent[1][1] == read[1][1]  # the frame's id, whatever the fault


def test_a_leap_second_with_escaped_characters_is_read_as_any_other() -> None:
    # JSON may escape any character of a string: the time is the same, and so its reading.
    for escaped in ("2016-12-31T23:59\\u003a60Z", "2016-12-31T23:59:6\\u0030Z"):
        data = encoded(JSON, {"type": "message", "message": message("x", "AT")})
        frame = JSON.decode_client(str(data).replace("AT", escaped))
        assert isinstance(frame, PublishMessage), escaped
        assert frame.message.created_at == datetime(2016, 12, 31, 23, 59, 59, 999999, UTC)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_reading_a_leap_second_decodes_no_value_the_frame_would_not(codec: Codec) -> None:
    # An unknown field of 300,000 empty lists, which the decoder skips: decoded as
    # plain objects to find the leap second, it took 64 bytes of memory a byte of
    # frame (a second of CPU for a MessagePack frame of 1 MiB, charged as its bytes).
    frame = {"type": "message", "message": message("x", LEAP), "junk": [[]] * 300_000}
    data = msgspec.json.encode(frame).decode() if codec is JSON else msgspec.msgpack.encode(frame)
    tracemalloc.start()
    try:
        decoded, _ = codec.decode_request(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(decoded, PublishMessage)
    assert decoded.message.created_at == datetime(2016, 12, 31, 23, 59, 59, 999999, UTC)
    assert peak < 4 * len(data), (peak, len(data))
