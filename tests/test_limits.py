"""Limits over real connections: frame rate, connections per user, page sizes, frame
size, nesting depth and huge numbers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt

from bamboo_session.server.limits import ByteRate, ConnectionCounter, FrameLimiter, TokenBucket
from tests.support import Peer, attach, get, open_peer, run_server, token
from tests.test_server_lifecycle import eventually

SECRET = "s" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.1
    assert bucket.take() and not bucket.take()
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3
    assert all(TokenBucket(0, 1, clock).take() for _ in range(1000))  # 0: no limit


def test_a_refund_gives_back_what_was_charged_ahead_never_past_the_burst() -> None:
    # A request's page is charged ahead of its read, and given back once its own size
    # is charged: what refilled meanwhile is not paid twice.
    clock = FakeClock()
    meter = ByteRate(100, 1_000, clock)
    assert meter.charge(1_500) == 5.0  # 500 in debt, at 100 a second
    meter.refund(1_200)
    assert meter.charge(0) == 0.0 and meter.charge(700) == 0.0 and meter.charge(1) > 0
    clock.now += 100  # full again
    meter.charge(600)
    clock.now += 100  # full again, the 600 still charged ahead
    meter.refund(600)
    assert meter.charge(1_000) == 0.0 and meter.charge(1) > 0  # the burst, no more


def test_frame_limiter_gives_up_after_the_refusals_budget() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=1, burst=1, refusals=3, clock=clock)
    assert limiter.admit() and not limiter.admit()
    assert [limiter.refuse() for _ in range(4)] == [False, False, False, True]
    clock.now += 10  # a peer that backs off starts afresh
    assert limiter.admit() and not limiter.refuse()


def test_connection_counter() -> None:
    counter = ConnectionCounter(2)
    counter.acquire("u")
    counter.acquire("u")
    try:
        counter.acquire("u")
        raise AssertionError("third connection accepted")
    except Exception as exc:
        assert "more than 2" in str(exc)
    counter.release("u")
    counter.acquire("u")
    counter.release("u")
    counter.release("u")
    assert counter.count("u") == 0
    unlimited = ConnectionCounter(0)
    for _ in range(1000):
        unlimited.acquire("u")


async def drain(peer: Peer, count: int) -> list[dict[str, Any]]:
    return [await peer.recv() for _ in range(count)]


async def test_frames_over_the_rate_get_rate_limited_with_their_id_and_are_not_processed() -> None:
    async with run_server(rate_limit=5, rate_limit_burst=5, rate_limit_refusals=50) as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            # the hello took one token; ten frames at once: four pass, the rest are refused
            for i in range(10):
                await peer.send({"type": "event", "id": i, "event": token(str(i))})
            replies = await drain(peer, 10)
            acked = [r["id"] for r in replies if r["type"] == "ack"]
            refused = [r for r in replies if r["type"] == "error"]
            assert 4 <= len(acked) <= 5 and acked == list(range(len(acked)))
            assert all(r["code"] == "rate_limited" for r in refused)
            assert [r["id"] for r in refused] == list(range(len(acked), 10))
            # refused frames were not processed: only the acknowledged events are stored
            stored = await server.manager.read_events(session_id)
            assert len(stored) == len(acked)
            # a frame whose id can be read but that is otherwise invalid still gets its id
            await peer.send({"type": "nonsense", "id": "x"})
            assert (await peer.recv())["id"] == "x"
            await asyncio.sleep(0.5)  # tokens come back
            assert (await peer.request({"type": "ping", "id": 99}, "pong"))["id"] == 99


async def test_a_peer_that_keeps_flooding_is_closed_4429_and_others_are_unaffected() -> None:
    async with run_server(rate_limit=20, rate_limit_burst=20, rate_limit_refusals=30) as server:
        async with (
            attach(server) as (flooder, welcome),
            attach(server, welcome["session"]["id"]) as (other, _),
        ):
            with_ids = [json.dumps({"type": "ping", "id": i}) for i in range(200)]
            started = asyncio.get_running_loop().time()
            for frame in with_ids:
                try:
                    await flooder.ws.send(frame)
                except Exception:
                    break
            code, frames = await flooder.closed()
            took = asyncio.get_running_loop().time() - started
            assert (code, flooder.ws.close_reason) == (4429, "rate limited")
            pongs = [f["id"] for f in frames if f["type"] == "pong"]
            refused = [f["id"] for f in frames if f["type"] == "error"]
            # The burst, and what the rate gave back while the flood was read (on a
            # loaded machine that is more than the few milliseconds it takes at rest).
            assert len(pongs) <= 20 + int(20 * took) + 1, (len(pongs), took)
            # Every frame read before the close got its answer: the rate_limited errors
            # queued are sent before the close, not dropped as a slow reader's backlog.
            assert sorted(pongs + refused) == list(range(len(pongs) + len(refused)))
            assert len(refused) >= 30
            assert all(f["code"] == "rate_limited" for f in frames if f["type"] == "error")
            assert (await other.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
        # A rate-limit close is no send-queue overflow.
        metrics = (await get(server, "/metrics"))[1]
        assert "bamboo_send_queue_drops_total 0.0" in metrics
        assert 'bamboo_closes_total{code="4429"} 1.0' in metrics


async def test_connections_per_user_are_capped_at_hello() -> None:
    async with run_server(max_connections_per_user=2) as server:
        async with attach(server, user_id="u") as (_, welcome):
            session_id = welcome["session"]["id"]
            async with attach(server, session_id, user_id="u"):
                async with open_peer(server, session_id) as third:
                    await third.send({"type": "hello", "user_id": "u"})
                    code, frames = await third.closed()
                    assert (code, frames) == (4429, [])
                # other users, and anonymous connections, are not counted against u
                async with attach(server, session_id, user_id="v"), attach(server, session_id):
                    pass
            # a closed connection frees its place
            await eventually(lambda: server.user_connections.count("u") < 2)
            async with attach(server, session_id, user_id="u") as (peer, _):
                assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1


async def test_under_auth_connections_count_against_the_token_sub() -> None:
    def make(sub: str) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, "HS256")

    async with run_server(auth_secret=SECRET, max_connections_per_user=1) as server:
        async with attach(server, token=make("alice"), user_id="x") as (_, welcome):
            session_id = welcome["session"]["id"]
            async with open_peer(server, session_id) as second:
                await second.send({"type": "hello", "token": make("alice"), "user_id": "y"})
                assert (await second.closed())[0] == 4429
            async with open_peer(server, session_id) as bad:  # refused tokens count nothing
                await bad.send({"type": "hello", "token": "garbage"})
                assert (await bad.closed())[0] == 4401
        await eventually(lambda: server.user_connections.count("alice") == 0)


async def test_page_sizes_are_clamped_by_the_configured_maximums() -> None:
    async with run_server(max_history_page=3, max_events_page=4, max_list_page=5) as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            for i in range(10):
                message = {"role": "user", "content": str(i)}
                await peer.request({"type": "message", "id": i, "message": message}, "ack")
            history = await peer.request({"type": "history", "id": "h", "limit": 1000}, "history")
            assert [m["content"] for m in history["messages"]] == ["7", "8", "9"]
            assert history["has_more"] is True
            events = await peer.request({"type": "events", "id": "e", "limit": 10**6}, "events")
            assert [e["seq"] for e in events["events"]] == [1, 2, 3, 4]
            assert events["last_seq"] == 10
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events?limit=1000")
        assert status == 200 and len(body["events"]) == 4
        assert (await get(server, "/api/v1/sessions?limit=6"))[0] == 400


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_deep_nesting_huge_numbers_and_huge_frames_over_a_real_connection() -> None:
    async with run_server(max_frame_bytes=64 * 1024) as server:
        async with attach(server) as (peer, _):
            custom = {"type": "custom", "name": "n"}
            await peer.send({"type": "event", "id": 1, "event": {**custom, "data": nested(99)}})
            assert (await peer.recv())["type"] == "ack"
            # past the decoder's depth limit, and far past any recursion limit
            for depth in (101, 30_000):
                raw = '{"type":"event","id":2,"event":{"type":"custom","name":"n","data":'
                await peer.ws.send(raw + "[" * depth + "]" * depth + "}}")
                reply = await peer.recv()
                assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
            raw_number = '{"type":"events","id":3,"after_seq":' + "9" * 4000 + "}"
            await peer.ws.send(raw_number)
            assert (await peer.recv())["code"] == "bad_request"
            await peer.send({"type": "event", "id": 4, "event": {**custom, "data": 2**64}})
            assert (await peer.recv())["code"] == "bad_request"
            await peer.ws.send("[" * 60_000)  # unterminated and deep: still just bad_request
            assert (await peer.recv())["code"] == "bad_request"
            assert (await peer.request({"type": "ping", "id": 5}, "pong"))["id"] == 5
            # a frame over max_frame_bytes closes the connection with 1009
            await peer.send({"type": "event", "id": 6, "event": token("x" * 70_000)})
            code, _ = await peer.closed()
            assert code == 1009
        async with attach(server) as (peer, _):  # the server is still serving
            assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
