"""An answer to ``TIME`` more than 100 years from this machine's clock (a proxy's, a
broken Redis's, a snapshot restored from a machine whose clock was wrong) is a failed
reading of Redis's clock (persistence/redis/clock.py): the reading held stands, as
while Redis is away, and the log says so once, not at each reading, then once more
when an answer is sane again. Taken, an answer thousands of years ahead made every
``now`` raise (``datetime.fromtimestamp``: year 11533 is out of range): the live
session's actor failed at its next look (``session actor failed``, a traceback), its
publisher was closed 1011 ``internal error``, and a ``hello`` with ``create`` failed as
well (``creating a session failed``). One as far behind (before the year 1) did the same.

A real server on a real redis-server, reached through a proxy (tests/proxies.py) that
rewrites the answers to the clock's ``TIME`` alone (redis-server does not run under
libfaketime here): the scripts' own ``TIME`` is Redis's, and sane."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis import clock
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import Session, utcnow
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy, _Link
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, run_server, token

# Seconds added to Redis's answer: about 9,500 years on (the year 11533), and back (the
# year -7480: a proxy may answer anything). Both out of datetime's range.
SHIFTS = {"ahead": 300_000_000_000, "behind": -300_000_000_000}
TIME_COMMAND = b"*1\r\n$4\r\nTIME\r\n"  # as redis-py sends it
TIME_ANSWER = re.compile(rb"\*2\r\n\$\d+\r\n(-?\d+)\r\n")  # RESP's array, its seconds first
# Readings refused before the checks: the held one stale by then (the seam's interval
# of 0.5 s and STALE, 3.5 s; readings about a second apart).
REFUSED = 5


class TimeShiftingProxy(RedisProxy):
    """A RedisProxy that adds ``shift`` seconds to Redis's answers to ``TIME``;
    ``shifted`` counts the answers so changed."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.shift = 0
        self.shifted = 0
        self._asking: set[_Link] = set()  # connections whose next reply answers TIME

    def _sending(self, link: _Link, data: bytes) -> None:
        if data == TIME_COMMAND:
            self._asking.add(link)

    def _replying(self, link: _Link, data: bytes) -> bytes:
        if link not in self._asking:
            return data
        self._asking.discard(link)
        answer = TIME_ANSWER.match(data)
        if not self.shift or answer is None:
            return data
        self.shifted += 1
        seconds = b"%d" % (int(answer[1]) + self.shift)
        # The bulk string's length follows its digits: $10 becomes $12.
        return b"*2\r\n$%d\r\n%s\r\n" % (len(seconds), seconds) + data[answer.end() :]


@asynccontextmanager
async def server_through(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[BambooServer, TimeShiftingProxy]]:
    proxy = TimeShiftingProxy(redis_server.port)
    port = await proxy.start()
    store = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
    try:
        async with run_server(store=store, default_ttl=3600) as server:
            assert isinstance(server.storage, RedisStorage)
            server.storage.clock.interval = 0.5  # the seam: a reading about every second
            yield server, proxy
    finally:
        await proxy.close()


def said(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("way", SHIFTS)
async def test_a_time_answer_centuries_off_is_a_failed_reading_and_the_server_serves_on(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, way: str
) -> None:
    caplog.set_level(logging.INFO, logger=clock.__name__)
    async with (
        server_through(redis_server, tmp_path) as (server, proxy),
        attach(server, "live", create=True) as (publisher, _),
    ):
        ack = await publisher.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        assert ack["seq"] == 1
        proxy.shift = SHIFTS[way]
        await eventually(lambda: proxy.shifted >= REFUSED, timeout=30)
        # The live peer publishes on, acknowledged; a session is made; both are read.
        ack = await publisher.request({"type": "event", "id": 2, "event": token("b")}, "ack")
        assert ack["seq"] == 2
        async with attach(server, "new", create=True) as (_, welcome):
            assert welcome["session"]["id"] == "new"
        for session_id in ("live", "new"):
            status, _ = await get(server, f"/api/v1/sessions/{session_id}")
            assert status == 200, session_id
        # The clock stands at the last sane reading, behind this machine's, never ahead.
        now = server.storage.now()
        assert utcnow() - timedelta(hours=1) < now <= utcnow() + timedelta(seconds=1)
        assert said(caplog, "more than 100 years") == 1, caplog.records  # not per reading
        proxy.shift = 0
        await eventually(lambda: said(caplog, "within 100 years of this machine's") == 1)
        stood = server.storage.now()
        await eventually(lambda: server.storage.now() > stood)  # read again: it runs
        ack = await publisher.request({"type": "event", "id": 3, "event": token("c")}, "ack")
        assert ack["seq"] == 3
    assert said(caplog, "more than 100 years") == 1


async def test_a_time_answer_centuries_off_at_the_open_leaves_this_machine_clock(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before any sane reading, the clock is this machine's; the open's line about a
    clock it cannot read is not said beside the one about the answer."""
    caplog.set_level(logging.INFO, logger=clock.__name__)
    proxy = TimeShiftingProxy(redis_server.port)
    port = await proxy.start()
    proxy.shift = SHIFTS["ahead"]
    url = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
    try:
        storage = await open_storage(url, cleanup_interval=None)
        try:
            before = utcnow()
            assert before <= storage.now() <= utcnow()
            await storage.create_session(Session.new("s", ttl=60, now=storage.now()))
            metadata = await storage.get_metadata("s")
            assert metadata is not None and not metadata.is_expired(storage.now())
        finally:
            await storage.close()
    finally:
        await proxy.close()
    assert proxy.shifted >= 1
    assert said(caplog, "more than 100 years") == 1, caplog.records
    assert said(caplog, "cannot read Redis's clock") == 0, caplog.records
