"""The bound a publish's check uses to skip encoding an event in MessagePack a second
time (server/decode_charge.py ``msgpack_bound``: the least of 2.3 J + 8 and J + 5
MAX_FREE_VALUES + J / 32,768 + 8, J its size in JSON) is never under the event's size
in MessagePack, as a MessagePack viewer gets it: fuzzed over JSON values (every kind,
every integer size, floats to the extremes, escaped and wide strings, deep nesting) in
frames the server decodes (at most MAX_FREE_VALUES free-form values, the floats among
them), and on the worst cases its proof names, each as close to it as a value can
come."""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bamboo_session.protocol.codec import JSON
from bamboo_session.protocol.errors import ProtocolError
from bamboo_session.protocol.frames import PublishEvent
from bamboo_session.protocol.free_form import MAX_FREE_VALUES
from bamboo_session.server.decode_charge import msgpack_bound

_msgpack = msgspec.msgpack.Encoder()


def beyond_the_bound(data: Any, event: dict[str, Any] | None = None) -> float:
    """The custom event of ``data`` (or ``event``), published in a JSON frame and
    decoded as the server decodes it (its free-form values counted): its MessagePack
    size as a viewer gets it less the bound of its JSON size as stored."""
    if event is None:
        event = {"type": "custom", "name": "n", "data": data}
    frame = {"type": "event", "id": 1, "event": event}
    decoded = JSON.decode_client(JSON.encode(frame))
    assert isinstance(decoded, PublishEvent)
    encoded = JSON.encode(decoded.event)
    return len(_msgpack.encode(msgspec.json.decode(encoded))) - msgpack_bound(len(encoded))


# What JSON can carry, leaves first: every integer size either codec writes, floats of
# every form (NaN and infinities are refused as decoded), strings with escapes and wide
# characters.
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32, -(2**31) - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.5, -0.0, 1e-300, 5e-324, 1e16, 1.5e300, 2.0**70])
    | st.text()
    | st.text(alphabet='"\\\x00\x01\x7f\u2028é😀.eE', max_size=40)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=400,
)


@settings(max_examples=400, deadline=None)
@given(data=values)
def test_no_event_is_over_the_bound_in_msgpack(data: Any) -> None:
    try:
        excess = beyond_the_bound(data)
    except ProtocolError:
        assume(False)  # refused as decoded (NaN, too many values): never checked
    assert excess <= 0


def test_the_worst_cases_are_within_the_bound() -> None:
    """The values that come closest: floats of three bytes (``0.5``), each 5 bytes
    longer with the comma after it, in arrays of 16 (3 bytes of header for a '['), and
    as many as a frame may hold, alone and beside long text; strings of 256 and 65,536
    bytes or more (their headers 3 and 5), 16 in an array; maps alike; and the other
    extremes."""
    tight = [0.5] * 16
    most = MAX_FREE_VALUES - 2  # the data and its array counted too
    worst = [
        tight,
        [tight] * 16,
        [[tight] * 16] * 4,
        {f"k{i:02}": 0.5 for i in range(16)},
        {"x" * 256 + str(i): 0.5 for i in range(16)},
        ["x" * 256] * 16,
        ["x" * 65536] * 16,
        "x" * 65536,
        [0.5] * most,
        [tight] * ((MAX_FREE_VALUES - 1) // 17),
        {"t": "x" * 800_000, "f": [0.5] * (MAX_FREE_VALUES - 4)},
        [[]] * most,
        [-0.0, 1e-300, 5e-324, 1.7976931348623157e308, 2**64 - 1, -(2**63), None, True],
        "\x01" * 70000,
        ["\u2028😀"] * 16,
    ]
    deep: Any = 0.5
    for _ in range(90):
        deep = [deep]
    worst.append(deep)
    excess = [beyond_the_bound(data) for data in worst]
    assert max(excess) <= 0, excess
    # Keys, and strings of typed fields, are not counted as values: from 65,536 bytes,
    # 2 bytes more each (J / 32,768 holds them), beside the most floats.
    long = "x" * 65536
    keyed = {long + str(i): 0.5 for i in range(40)} | {"f": [0.5] * (MAX_FREE_VALUES - 43)}
    assert beyond_the_bound(keyed) <= 0
    calls = [{"id": long, "name": long, "arguments": [0.5] * 250}] * 64
    metadata = {"f": [0.5] * (MAX_FREE_VALUES - 64 * 251 - 2)}
    message = {"role": "assistant", "content": long, "tool_calls": calls, "metadata": metadata}
    assert beyond_the_bound(None, {"type": "message", "message": message}) <= 0
    # The bound is tight: the most floats a frame holds come within 40 bytes of it.
    assert beyond_the_bound([0.5] * most) > -40


def test_seeded_random_events_are_within_the_bound() -> None:
    """Wide random events of floats, integers and strings together, seeded."""
    draw = random.Random(450)
    pieces: list[Any] = [0.5, 1.25, 9e99, -0.0, 17, -(2**63), 2**64 - 1, "x" * 300, "é.e", None]
    for _ in range(200):
        count = draw.choice([15, 16, 17, 255, 256, MAX_FREE_VALUES - 2])
        data: Any = [draw.choice(pieces) for _ in range(count)]
        if draw.random() < 0.5:
            data = {str(i): value for i, value in enumerate(data)}
        assert beyond_the_bound(data) <= 0
