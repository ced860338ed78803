"""The batch publish extension against a real server, on every backend: one ``batch``
frame appends its items in order and is answered by one ``acks``; viewers still get one
``event`` frame per item; a bad batch appends nothing; limits count items
(docs/protocol.md, "Extension: batch publish")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, get, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


def item(content: str, key: str | None = None) -> dict[str, Any]:
    return {"event": token(content), "key": key}


def message_item(content: str, key: str | None = None) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": content}, "key": key}


async def log_of(peer: Peer) -> list[Any]:
    """The session's log as (seq, what) pairs, read with an ``events`` request."""
    reply = await peer.request({"type": "events", "id": "log"}, "events")
    return [(e["seq"], _what(e["event"])) for e in reply["events"]]


def _what(event: dict[str, Any]) -> str:
    return str(event["content"] if event["type"] == "token" else event["message"]["content"])


async def test_the_welcome_lists_the_extension_and_its_limits() -> None:
    async with run_server(max_batch_items=50) as server, attach(server) as (_, welcome):
        assert welcome["extensions"] == ["batch"] and welcome["max_batch_items"] == 50
        assert welcome["max_batch_bytes"] == 1024 * 1024  # the frame size limit
    # Never more items than the rate limit's burst lets through at once (found by review).
    limits = {"rate_limit": 1000, "rate_limit_burst": 20}
    async with run_server(**limits) as server, attach(server) as (_, welcome):
        assert welcome["max_batch_items"] == 20


async def test_a_batch_appends_in_order_and_viewers_get_one_event_each() -> None:
    async with (
        run_server() as server,
        attach(server, "b", create=True, role="agent") as (agent, _),
        attach(server, "b") as (viewer, _),
    ):
        await agent.request({"type": "event", "id": 1, "event": token("before")}, "ack")
        items = [item("a", "k-a"), message_item("hello"), item("b"), item("c", "k-c")]
        acks = await agent.request({"type": "batch", "id": 7, "items": items}, "acks")
        assert acks == {"type": "acks", "id": 7, "seqs": [2, 3, 4, 5]}  # no duplicates field
        events = [await viewer.recv_type("event") for _ in range(5)]
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
        assert [_what(e["event"]) for e in events] == ["before", "a", "hello", "b", "c"]
        assert events[2]["event"]["message"]["id"].startswith("m_")  # filled in
        assert "key" not in events[1]  # keys are stored, never sent to peers
        history = await viewer.request({"type": "history", "id": "h"}, "history")
        assert [m["content"] for m in history["messages"]] == ["hello"]
        # The publisher gets no event of its own; the next thing it reads is its pong.
        assert (await agent.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"
        figures = (await get(server, "/api/v1/stats"))[1]
        assert figures["events_appended"] == 5


async def test_duplicates_within_a_batch_and_against_earlier_appends() -> None:
    async with run_server() as server, attach(server, "d", create=True) as (peer, _):
        first = {"type": "event", "id": 1, "key": "k1", "event": token("one")}
        assert (await peer.request(first, "ack"))["seq"] == 1
        items = [item("two", "k2"), item("one again", "k1"), item("two again", "k2"), item("x")]
        acks = await peer.request({"type": "batch", "id": 2, "items": items}, "acks")
        assert acks["seqs"] == [2, 1, 2, 3] and acks["duplicates"] == [1, 2]
        # A whole batch resent after a drop: every item is a duplicate of its first seq.
        resent = [item("two", "k2"), message_item("m", "k3")]
        acks = await peer.request({"type": "batch", "id": 3, "items": resent}, "acks")
        assert acks["seqs"] == [2, 4] and acks["duplicates"] == [0]
        acks = await peer.request({"type": "batch", "id": 4, "items": resent}, "acks")
        assert acks["seqs"] == [2, 4] and acks["duplicates"] == [0, 1]
        # ... and a single frame with a key a batch used is a duplicate too.
        again = {
            "type": "message",
            "id": 5,
            "key": "k3",
            "message": {"role": "user", "content": "m"},
        }
        assert await peer.request(again, "ack") == {
            "type": "ack",
            "id": 5,
            "seq": 4,
            "duplicate": True,
        }
        assert await log_of(peer) == [(1, "one"), (2, "two"), (3, "x"), (4, "m")]


@pytest.mark.parametrize("keyed", [False, True], ids=["no-keys", "keys"])
async def test_a_thousand_messages_without_ids_get_distinct_ids_in_order(keyed: bool) -> None:
    # With keys, the second half repeats the first's: duplicates within the batch.
    keys = [f"k{i % 500}" if keyed else None for i in range(1000)]
    items = [message_item(str(i), key) for i, key in enumerate(keys)]
    stored = 500 if keyed else 1000
    async with (
        run_server(max_batch_items=1000) as server,
        attach(server, "ids", create=True) as (peer, _),
    ):
        acks = await peer.request({"type": "batch", "id": 1, "items": items}, "acks")
        assert acks["seqs"] == [i % stored + 1 for i in range(1000)]
        assert acks.get("duplicates", []) == list(range(stored, 1000))
        history = {"type": "history", "id": "h", "limit": 1000}
        messages = (await peer.request(history, "history"))["messages"]
        assert [m["content"] for m in messages] == [str(i) for i in range(stored)]
        assert len({m["id"] for m in messages}) == stored
        if keyed:  # the batch sent again: each item a duplicate of its first seq
            acks = await peer.request({"type": "batch", "id": 2, "items": items}, "acks")
            assert acks["seqs"] == [i % 500 + 1 for i in range(1000)]
            assert acks["duplicates"] == list(range(1000))
        assert [seq for seq, _ in await log_of(peer)] == list(range(1, stored + 1))


async def test_an_empty_key_is_a_key_within_a_batch() -> None:
    # PROTOCOL.md: "" is a key like any other, in a batch's items as on single frames.
    async with run_server() as server, attach(server, "e", create=True) as (peer, _):
        items = [item("a", ""), item("b"), item("a again", ""), message_item("m", "")]
        acks = await peer.request({"type": "batch", "id": 1, "items": items}, "acks")
        assert acks["seqs"] == [1, 2, 1, 1] and acks["duplicates"] == [2, 3]
        acks = await peer.request({"type": "batch", "id": 2, "items": [item("c", "")]}, "acks")
        assert acks["seqs"] == [1] and acks["duplicates"] == [0]
        single = {"type": "event", "id": 3, "key": "", "event": token("d")}
        assert await peer.request(single, "ack") == {
            "type": "ack",
            "id": 3,
            "seq": 1,
            "duplicate": True,
        }
        assert await log_of(peer) == [(1, "a"), (2, "b")]


BAD_BATCHES: list[tuple[list[Any], str]] = [
    ([], "at least one item"),
    ([item("a"), {"key": "k"}], "items[1]: an item holds exactly one of event and message"),
    ([item("a"), {**item("b"), **message_item("c")}], "items[1]: an item holds exactly one"),
    ([item("a"), {"event": {"type": "token", "content": 3}}], "$.items[1].event.content"),
    ([item("a"), {"event": {"type": "nonsense"}}], "$.items[1].event"),
    ([item("a"), {"event": {"type": "custom", "name": "n", "data": 2**64}}], "items[1]: value"),
    ([item("a"), item("b", "k" * 129)], "$.items[1].key"),
    ([item("a"), {"message": {"role": "robot", "content": "x"}}], "$.items[1].message.role"),
    ([item(str(i)) for i in range(4)], "at most 3 items, not 4"),
]


@pytest.mark.parametrize(("items", "says"), BAD_BATCHES)
async def test_a_bad_batch_is_a_bad_request_and_appends_nothing(
    items: list[Any], says: str
) -> None:
    async with (
        run_server(max_batch_items=3) as server,
        attach(server, "bad", create=True) as (peer, _),
        attach(server, "bad") as (viewer, _),
    ):
        await peer.request({"type": "event", "id": 1, "event": token("kept")}, "ack")
        error = await peer.request({"type": "batch", "id": "x", "items": items}, "error")
        assert error["code"] == "bad_request" and error["id"] == "x", error
        assert says in error["message"], error
        assert await log_of(peer) == [(1, "kept")]
        # Nothing reached the viewer but the one good event.
        assert (await viewer.recv_type("event"))["seq"] == 1
        assert (await viewer.request({"type": "ping", "id": 0}, "pong"))["id"] == 0
        # The connection goes on.
        good = {"type": "batch", "id": 2, "items": [item("y"), item("z")]}
        assert (await peer.request(good, "acks"))["seqs"] == [2, 3]


async def test_each_item_costs_a_token_of_the_frame_rate() -> None:
    async with (
        run_server(rate_limit=1, rate_limit_burst=10, rate_limit_refusals=50) as server,
        attach(server, "r", create=True) as (peer, _),
    ):
        # Ten tokens (hello takes none): a batch of 11 is refused whole, and costs one.
        over = {"type": "batch", "id": 1, "items": [item(str(i)) for i in range(11)]}
        error = await peer.request(over, "error")
        assert (error["code"], error["id"]) == ("rate_limited", 1)
        assert "each item" in error["message"]
        within = {"type": "batch", "id": 2, "items": [item(str(i)) for i in range(9)]}
        assert (await peer.request(within, "acks"))["seqs"] == list(range(1, 10))
        # The bucket is empty now: the next frame is refused too.
        refused = await peer.request({"type": "event", "id": 3, "event": token("x")}, "error")
        assert refused["code"] == "rate_limited"
        events = await server.manager.read_events("r")
        assert len(events) == 9


async def test_a_batch_larger_than_the_inbox_still_goes_through_whole() -> None:
    # An empty inbox always takes one request, a batch included, whatever its size; the
    # actor takes at most 512 commands at a time but never splits a batch.
    async with (
        run_server(inbox_limit=4, max_batch_items=1000) as server,
        attach(server, "big", create=True) as (peer, _),
        attach(server, "big") as (viewer, _),
    ):
        for round_ in range(3):
            items = [item(f"{round_}.{i}") for i in range(700)]
            acks = await peer.request({"type": "batch", "id": round_, "items": items}, "acks")
            assert acks["seqs"] == list(range(700 * round_ + 1, 700 * (round_ + 1) + 1))
        seqs = [(await viewer.recv_type("event"))["seq"] for _ in range(2100)]
        assert seqs == list(range(1, 2101))
        metrics = (await get(server, "/metrics"))[1]
        assert "bamboo_batch_items_count 3.0" in metrics
        assert "bamboo_batch_items_sum 2100.0" in metrics
        assert "bamboo_events_appended_total 2100.0" in metrics


async def test_pipelined_batches_from_two_publishers_keep_each_batch_consecutive() -> None:
    async with (
        run_server() as server,
        attach(server, "two", create=True) as (one, _),
        attach(server, "two") as (other, _),
    ):
        for i in range(20):
            await one.send(
                {"type": "batch", "id": i, "items": [item(f"a{i}.{j}") for j in range(5)]}
            )
            await other.send({"type": "event", "id": i, "event": token(f"b{i}")})
        replies = [await one.recv_type("acks") for _ in range(20)]
        assert [r["id"] for r in replies] == list(range(20))  # in the order of the requests
        for reply in replies:
            first = reply["seqs"][0]
            assert reply["seqs"] == list(range(first, first + 5)), "a batch was interleaved"
        # The other publisher's events are stored once acknowledged, not before: read
        # the log only then (it held 112 of 120 when read after the batches' acks alone).
        assert [(await other.recv_type("ack"))["id"] for _ in range(20)] == list(range(20))
        assert len(await server.manager.read_events("two")) == 120


async def test_a_batch_in_messagepack() -> None:
    async with (
        run_server() as server,
        attach(server, "mp", create=True, msgpack=True) as (peer, welcome),
        attach(server, "mp") as (viewer, _),
    ):
        assert welcome["extensions"] == ["batch"]
        items = [item("a", "k"), message_item("m"), item("a again", "k")]
        acks = await peer.request({"type": "batch", "id": 1, "items": items}, "acks")
        assert acks == {"type": "acks", "id": 1, "seqs": [1, 2, 1], "duplicates": [2]}
        assert [(await viewer.recv_type("event"))["seq"] for _ in range(2)] == [1, 2]
        error = await peer.request({"type": "batch", "id": 2, "items": [{}]}, "error")
        assert error["code"] == "bad_request" and error["id"] == 2


async def test_with_the_extension_off_the_server_speaks_plain_version_1() -> None:
    async with (
        run_server(batch_frames=False) as server,
        attach(server, "off", create=True) as (peer, welcome),
    ):
        assert "extensions" not in welcome and "max_batch_items" not in welcome
        error = await peer.request({"type": "batch", "id": 1, "items": [item("a")]}, "error")
        assert error["code"] == "bad_request" and error["id"] == 1
        assert await log_of(peer) == []


@pytest.mark.parametrize("batched", [True, False])
async def test_a_close_pipelined_behind_appends_comes_after_their_events(batched: bool) -> None:
    """Appends, then ``state: closed``, sent without waiting: every viewer gets every
    acknowledged event before ``closed``, and the state's ``ack`` carries the last seq.
    (Found by review: the close used to overtake events not yet handed to viewers.)"""
    async with run_server() as server:
        for round_ in range(5):
            session = f"close-race-{batched}-{round_}"
            async with (
                attach(server, session, create=True, role="agent") as (agent, _),
                attach(server, session) as (viewer, _),
            ):
                if batched:
                    items = [item(str(i), f"k{i}") for i in range(5)]
                    await agent.send({"type": "batch", "id": "b", "items": items})
                else:
                    for i in range(5):
                        await agent.send({"type": "event", "id": i, "event": token(str(i))})
                await agent.send({"type": "state", "id": "close", "state": "closed"})
                for reply in ["acks"] if batched else ["ack"] * 5:
                    await agent.recv_type(reply)
                assert await agent.recv_type("ack") == {"type": "ack", "id": "close", "seq": 5}
                _code, frames = await viewer.closed()
                seen = [f for f in frames if f["type"] != "presence"]
                assert [f["type"] for f in seen] == ["event"] * 5 + ["closed"]
                assert [f["seq"] for f in seen[:5]] == [1, 2, 3, 4, 5]
