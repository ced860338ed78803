"""The byte rate counts what a frame weighs decoded (docs/protocol.md, Byte rate): a
frame of many small values costs the server far more to decode than its bytes say, and
its peer's reading waits in proportion, while another peer is served meanwhile; a
frame refused as it is decoded is charged the time its decode took, at most as if its
bytes held the most values they can: one refused past the free-form values bound holds
its peer back, one refused at its first field costs about its bytes. Lower bounds on
the waits and orderings are asserted, not speeds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bamboo_session.protocol.free_form import FREE_VALUE_BYTES, MAX_FREE_VALUES
from bamboo_session.server.limits import FRAME_BYTES
from tests.support import Peer, attach, run_server
from tests.test_byte_rate import read_wait_seconds

RATE = 100_000
BURST = 20_000
VALUES = 1_500  # in one frame: 192 KB decoded, some 1.7 s of debt at RATE past BURST


def dense(values: int) -> list[Any]:
    """A free-form value holding ``values`` values: a list of empty objects."""
    return [{}] * (values - 1)


def dense_requests() -> dict[str, tuple[dict[str, Any], int]]:
    """Requests of small values, and the least each costs decoded beyond its bytes
    (about 190 KB): a custom event's data and a message's metadata, 128 a value; a
    batch, 128 an item and a frame's 1 KiB for each item after the first."""
    message = {"role": "user", "content": "", "metadata": {"rows": dense(VALUES - 1)}}
    token = {"event": {"type": "token", "content": ""}}
    items = 165
    return {
        "custom": (
            {
                "type": "event",
                "id": 1,
                "event": {"type": "custom", "name": "x", "data": dense(VALUES)},
            },
            VALUES * FREE_VALUE_BYTES,
        ),
        "metadata": (
            {"type": "message", "id": 1, "message": message},
            VALUES * FREE_VALUE_BYTES,
        ),
        "batch": (
            {"type": "batch", "id": 1, "items": [token] * items},
            items * FREE_VALUE_BYTES + (items - 1) * FRAME_BYTES,
        ),
    }


async def pong_after(peer: Peer, since: float) -> float:
    """Seconds from ``since`` until ``peer``'s ping is answered."""
    await peer.request({"type": "ping", "id": "p"}, "pong")
    return time.monotonic() - since


# A burst smaller than the frame: reading already waits for the frame's bytes when its
# decoded weight is charged, and then waits that too.
@pytest.mark.parametrize(
    ("kind", "burst"),
    [("custom", BURST), ("custom", 2_000), ("metadata", BURST), ("batch", BURST)],
    ids=["custom", "custom-past-the-burst", "metadata", "batch"],
)
async def test_a_dense_request_holds_its_peers_reading_and_not_another_peers(
    kind: str, burst: int
) -> None:
    request, decoded = dense_requests()[kind]
    config = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": burst}
    async with (
        run_server(**config) as server,
        attach(server, create=True) as (dense_peer, welcome),
        attach(server, welcome["session"]["id"]) as (honest, _),
    ):
        sent = time.monotonic()
        await dense_peer.send(request)
        reply = await dense_peer.recv_type("acks" if kind == "batch" else "ack")
        assert reply["id"] == 1, reply
        # Decoded and answered, then the peer's reading waits for the debt: its next
        # frame is read only after it, while another connection is answered at once.
        dense_pong = asyncio.ensure_future(pong_after(dense_peer, sent))
        same_size = {"type": "event", "id": 2, "event": {"type": "token", "content": "x" * 6_000}}
        assert (await honest.request(same_size, "ack"))["id"] == 2
        await honest.request({"type": "ping", "id": "h"}, "pong")
        assert not dense_pong.done(), "the honest peer waited for the dense one"
        waited = await dense_pong
        assert waited >= (decoded - burst) / RATE * 0.9, waited
        assert await read_wait_seconds(server) > 0


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_a_frame_refused_past_the_values_bound_holds_its_peers_reading(
    msgpack: bool,
) -> None:
    """Decoded whole, then counted only to the bound: charged for the time its decode
    took (milliseconds: 2 MiB each), at most the most values its bytes could hold (2
    MiB), so its peer's next frame is read after another peer's exchange."""
    # A burst above the frame's bytes (48 KB in JSON): only its decode holds its peer.
    rate, values = 1_000_000, MAX_FREE_VALUES + 1
    config = {"rate_limit_bytes": rate, "rate_limit_bytes_burst": 100_000}
    refused = {
        "type": "event",
        "id": 1,
        "event": {"type": "custom", "name": "x", "data": dense(values)},
    }
    async with (
        run_server(**config) as server,
        attach(server, create=True, msgpack=msgpack) as (peer, welcome),
        attach(server, welcome["session"]["id"]) as (honest, _),
    ):
        sent = time.monotonic()
        await peer.send(refused)
        error = await peer.recv_type("error")
        assert error["code"] == "bad_request" and error["id"] == 1, error
        dense_pong = asyncio.ensure_future(pong_after(peer, sent))
        await honest.request({"type": "ping", "id": "h"}, "pong")
        assert not dense_pong.done(), "the honest peer waited for the refused one"
        await dense_pong
        assert await read_wait_seconds(server) > 0


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_a_long_frame_refused_at_its_first_field_costs_about_its_bytes(
    msgpack: bool,
) -> None:
    """512 KiB of strings with an unknown event type, refused as soon as its type is
    read: charged the most values its bytes could hold, a MessagePack one cost 64.5
    MiB; it stays within a burst of 60 (unless its decode took 29 ms)."""
    strings = ["x" * 1_000] * 512
    refused = {"type": "event", "id": 1, "event": {"type": "nope", "data": strings}}
    async with (
        run_server(rate_limit_bytes_burst=60 * 1024 * 1024) as server,
        attach(server, create=True, msgpack=msgpack) as (peer, _),
    ):
        await peer.send(refused)
        error = await peer.recv_type("error")
        assert error["code"] == "bad_request" and error["id"] == 1, error
        assert not any(c._repaid is not None for c in server._open_connections)
        await peer.request({"type": "ping", "id": "p"}, "pong")
        assert await read_wait_seconds(server) == 0.0


async def test_rate_limit_bytes_0_charges_nothing_for_dense_frames() -> None:
    refused = {
        "type": "event",
        "id": 2,
        "event": {"type": "custom", "name": "x", "data": dense(MAX_FREE_VALUES + 1)},
    }
    async with run_server(rate_limit_bytes=0, rate_limit_bytes_burst=1) as server:
        async with attach(server, create=True) as (peer, _):
            await peer.send(dense_requests()["custom"][0])
            assert (await peer.recv_type("ack"))["id"] == 1
            await peer.send(refused)
            assert (await peer.recv_type("error"))["id"] == 2
            await peer.request({"type": "ping", "id": "p"}, "pong")
            assert not any(c._repaid is not None for c in server._open_connections)
        assert await read_wait_seconds(server) == 0.0


async def test_a_peer_held_for_its_dense_frames_is_not_closed_by_the_keepalive() -> None:
    """Its Pong waits behind frames the server does not read yet: reading held for the
    debt does not count against ``--ping-timeout`` (4 s of debt here, past a Ping's
    0.3 s and its Pong's 1.5 s), and every frame is answered."""
    rate, frames = 2 * 1024 * 1024, 5
    config = {
        "rate_limit_bytes": rate,
        "rate_limit_bytes_burst": rate,
        "ping_interval": 0.3,
        "ping_timeout": 1.5,
    }
    request = dense_requests()["custom"][0]
    rows = {"type": "event", "event": {"type": "custom", "name": "x", "data": dense(16_000)}}
    async with run_server(**config) as server, attach(server, create=True) as (peer, _):
        for request_id in range(1, frames + 1):
            await peer.send(rows | {"id": request_id})
        acks = [(await peer.recv_type("ack"))["id"] for _ in range(frames)]
        assert acks == list(range(1, frames + 1))
        assert (await peer.request(request | {"id": "last"}, "ack"))["id"] == "last"
        assert await read_wait_seconds(server) > 1.0
