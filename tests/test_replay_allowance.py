"""Resumes' replays cost their peer's read allowance (server/read_allowance.py): a
peer that resumes from seq 0 over and over, reconnecting each time, gets a bounded
number of bytes a second, while a client that drops and resumes still gets every
missed event, in order, once, and another user is not held up by the first."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.server.limits import REPLY_SHARE
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.read_allowance import MAX_PEERS, ReadAllowances
from tests.auth_support import SECRET, make_token
from tests.support import attach, get, open_peer, run_server, token
from tests.test_client_resume import FAST, TcpProxy, watch
from tests.test_limits import FakeClock

EVENTS = 40
CONTENT = "x" * 10_000  # an event's frame is a little over 10 kB: the log, about 400 kB
# The byte rate's figures, which a peer's replays share at a sixteenth of their size:
# 160 kB of replay a second, 320 kB at once (less than the whole log).
RATE, BURST = 10_000, 20_000


async def metric(server: Any, name: str) -> float:
    text = (await get(server, "/metrics"))[1]
    return float(next(x for x in text.splitlines() if x.startswith(name)).split()[1])


async def fill(server: Any, session_id: str, count: int = EVENTS) -> None:
    await server.manager.append_events(session_id, [(token(CONTENT), None)] * count)


async def closing_within(outbox: Outbox, delay: float) -> bool:
    """A replay's way to wait (server/replay.py): until its outbox closes."""
    await outbox.closing_within(delay)
    return outbox.closing is not None


async def test_a_peer_has_one_allowance_for_all_its_connections() -> None:
    """One allowance per peer key, shared; none without a limit or a peer; a page costs
    a sixteenth of its bytes; a wait ends once the debt is repaid, or its waiter ends."""
    clock = FakeClock()
    waits: list[float] = []
    allowances = ReadAllowances(1_000, 2_000, clock)
    assert allowances.of(None) is None and ReadAllowances(0, 1).of("addr:x") is None
    mine = allowances.of("addr:127.0.0.1")
    assert mine is not None and allowances.of("addr:127.0.0.1") is mine
    outbox = Outbox("c", "client", 8)
    ended_within = functools.partial(closing_within, outbox)
    mine.charge(32_000)  # 2,000 of 2,000: spent, no debt yet
    assert mine.debt() == 0.0 and await mine.repaid(ended_within, waits.append)
    assert waits == []
    mine.charge(1_600)  # 100 over: 0.1 s of debt, shared by its connections
    assert allowances.of("addr:127.0.0.1") is mine and mine.debt() == pytest.approx(0.1)
    advance = asyncio.get_running_loop().call_later(0.05, setattr, clock, "now", 0.1)
    assert await mine.repaid(ended_within, waits.append)
    assert len(waits) == 1 and waits[0] >= 0.05
    advance.cancel()
    mine.charge(16_000)  # 1 s of debt: a closing outbox does not wait it
    outbox.close(CloseCode.NORMAL, "closed")
    assert not await mine.repaid(ended_within, waits.append) and waits[1] < 0.05
    for n in range(MAX_PEERS):  # the least recently used goes past the cap
        allowances.of(f"addr:10.0.{n // 256}.{n % 256}")
    assert allowances.of("addr:127.0.0.1") is not mine


async def replay_from_0(
    server: Any, session_id: str, epoch: str, stay: float, **hello: Any
) -> tuple[dict[str, Any], list[int]]:
    """A peer that resumes from seq 0 and reads its replay for at most ``stay`` seconds
    (or until it has the whole log), then hangs up: its welcome and the seqs it got."""
    seqs: list[int] = []
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello", "last_seq": 0, "epoch": epoch, **hello})
        welcome = await peer.recv()
        deadline = time.monotonic() + stay
        while len(seqs) < EVENTS and (left := deadline - time.monotonic()) > 0:
            try:
                frame = await peer.recv(timeout=left)
            except TimeoutError:
                break
            if frame["type"] == "event":
                seqs.append(frame["seq"])
    return welcome, seqs


async def test_a_peer_replaying_a_big_log_over_and_over_is_bounded() -> None:
    """For 3 s, a peer resumes from seq 0, takes what comes within 0.3 s, hangs up and
    does it again. Each replay is announced in full (``resumed``, ``replay`` 40), and
    what it gets is in order from seq 1; but all its connections together get the
    burst and the rate, not a log per reconnect: about 1 MB here, where it got 40 MB
    (a whole log every 30 ms) before replays were charged."""
    async with run_server(rate_limit_bytes=RATE, rate_limit_bytes_burst=BURST) as server:
        async with attach(server, create=True) as (_, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
        await fill(server, session_id)
        started, received, rounds = time.monotonic(), 0, 0
        while time.monotonic() - started < 3.0:
            welcome, seqs = await replay_from_0(server, session_id, epoch, stay=0.3)
            assert welcome["resumed"] is True and welcome["replay"] == EVENTS
            assert seqs == list(range(1, len(seqs) + 1))
            received += len(seqs)
            rounds += 1
        elapsed = time.monotonic() - started
        page = 256 * 1024  # one replay page may overshoot the allowance
        bound = (BURST + RATE * elapsed) * REPLY_SHARE + page
        assert received * len(CONTENT) <= bound, (received, rounds)
        assert received >= EVENTS, "the burst holds a whole replay, and it was sent"
        assert await metric(server, "bamboo_replay_wait_seconds_total") > 1.0


async def test_replays_are_charged_per_user_and_another_user_is_not_held_up() -> None:
    """Under auth the allowance is the token's ``sub``'s: while one user replays in a
    loop and is in debt, another's resume of a log as big comes at once."""
    config = {"auth_secret": SECRET, "rate_limit_bytes": RATE, "rate_limit_bytes_burst": BURST}
    async with run_server(**config) as server:
        logs = {}
        for user in ("mallory", "alice"):
            auth = make_token(user)
            async with attach(server, f"{user}-log", create=True, token=auth) as (_, welcome):
                logs[user] = welcome["epoch"], auth
            await fill(server, f"{user}-log")
        epoch, auth = logs["mallory"]
        for _ in range(4):  # 1.6 MB of replay asked for: the allowance is spent
            await replay_from_0(server, "mallory-log", epoch, stay=0.2, token=auth)
        # Held up by mallory's debt, alice's replay would wait it out; her own log is 5
        # kB past the burst (half a second). Mallory's debt, some 1.2 s after those
        # replays, is made 10 s as a mallory who kept replaying would make it (1.6 MB
        # more asked for), so that the two are told apart on a loaded machine by what
        # is measured, not by a wall time of 1 s.
        mallorys = server.services.read_allowances.of("user:mallory")
        assert mallorys is not None and mallorys.debt() > 0, "spent"
        mallorys.charge(int(10 * RATE * REPLY_SHARE))
        started = time.monotonic()  # before the debt is read: a hold-up takes >= debt
        debt = mallorys.debt()
        epoch, auth = logs["alice"]
        _, seqs = await replay_from_0(server, "alice-log", epoch, stay=debt, token=auth)
        assert seqs == list(range(1, EVENTS + 1))
        assert time.monotonic() - started < debt, f"held up by mallory's {debt:.1f} s"


@pytest.mark.parametrize("ring_bytes", [1 << 20, 0], ids=["from-ring", "from-store"])
async def test_a_client_that_drops_gets_every_missed_event_once_in_order(ring_bytes: int) -> None:
    """The reference client watches a session; its stream is cut while 60 events of
    10 kB are appended (600 kB, past the allowance's 320 kB burst), and 20 more come
    while it resumes. It gets all 85, in order, once: the replay waited (the metric
    says so), the live events queued behind it, and nothing was refused."""
    config = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": BURST, "ring_bytes": ring_bytes}
    async with run_server(**config) as server, TcpProxy(server.port) as proxy:
        async with await BambooClient.connect(
            proxy.url, "flaky", create=True, last_seq=0, **FAST
        ) as viewer:
            await fill(server, "flaky", 5)
            seen = await asyncio.wait_for(watch(viewer, 5), 10)
            proxy.downstream.clear()  # what the server sends now is lost at the cut
            await fill(server, "flaky", 60)
            proxy.cut()
            proxy.downstream.set()
            for _ in range(20):  # live, while the replay is under way
                await server.manager.append_events("flaky", [(token("live"), None)])
                await asyncio.sleep(0.02)
            seen += await asyncio.wait_for(watch(viewer, 80), 20)
        assert [e.seq for e in seen] == list(range(1, 86))
        assert [len(e.event.content) for e in seen[65:]] == [4] * 20  # type: ignore[union-attr]
        assert viewer.reconnects >= 1
        # 600 kB of replay is 37.5 kB of allowance, 17.5 kB past the burst: ~1.7 s.
        assert await metric(server, "bamboo_replay_wait_seconds_total") > 1.0


async def test_a_replay_waiting_for_its_allowance_does_not_hold_up_a_close() -> None:
    """A resume that waits for its peer's debt gets its whole replay, ``closed`` and 1000
    as soon as the session is closed, not once the debt (several seconds here) is
    repaid: a replay the close lets finish goes on without the debt."""
    async with run_server(rate_limit_bytes=1_000, rate_limit_bytes_burst=BURST) as server:
        async with attach(server, create=True) as (_, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
        await fill(server, session_id)
        # The burst's worth of replay, and the page that runs past it: the debt those
        # pages left (a page is charged whole) takes seconds to repay at 1 kB a second.
        _, seqs = await replay_from_0(server, session_id, epoch, stay=0.3)
        assert seqs == list(range(1, EVENTS + 1))  # 25 kB of allowance: 5 s of debt
        async with open_peer(server, session_id) as waiting:
            await waiting.send({"type": "hello", "last_seq": 0, "epoch": epoch})
            assert (await waiting.recv())["replay"] == EVENTS
            async with attach(server, session_id) as (closer, _):
                # A close held by the debt would be seen once it is repaid: measured
                # when the close is asked, not a wall time of 1 s.
                allowance = server.services.read_allowances.of("addr:127.0.0.1")
                assert allowance is not None
                started = time.monotonic()  # before the debt is read: a hold takes >= debt
                debt = allowance.debt()
                assert debt > 2.0, "in debt"
                await closer.request({"type": "state", "id": 1, "state": "closed"}, "ack")
                code, frames = await waiting.closed(timeout=2 * debt)
            assert code == 1000 and frames[-1]["type"] == "closed"
            assert time.monotonic() - started < debt, f"held by the {debt:.1f} s of debt"
            replayed = [f["seq"] for f in frames if f["type"] == "event"]
            assert replayed == list(range(1, EVENTS + 1))
