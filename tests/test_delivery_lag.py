"""The delivery lag /metrics shows (``bamboo_delivery_lag_seconds``): from an event's
stamp (its ``ts``) to its fan-out, on the store's clock. A store that stamped the event
itself times it by the monotonic clock since the stamp (``StoreClock.seconds_since``);
anything else by ``now() - ts``. Both must read the time that really passed, however the
fan-out came: right after the stamp, after another stamp came between, or with the
store's clock held ahead of the wall clock (where the wall clock's own difference from
``ts`` reads below zero).

A real server on an ephemeral port, real WebSocket peers, and an in-memory store whose
appends answer ``HOLD`` seconds after they stamp (the fan-out follows the answer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bamboo_session.persistence.base import Appended
from bamboo_session.persistence.clock import StoreClock
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import utcnow
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.support import attach, get, token
from tests.test_server_metrics import value

HOLD = 0.2  # seconds between an append's stamp and its answer (and so its fan-out)


class AnsweredLate(MemoryStorage):
    """Appends stamped, published to subscribers, and answered ``HOLD`` seconds later;
    with ``stamp_between``, another stamp of the store's clock comes meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.stamp_between = False

    async def append_events(
        self,
        session_id: str,
        items: Sequence[tuple[AgentEvent, str | None]],
        *,
        epoch: str | None = None,
    ) -> list[Appended]:
        results = await super().append_events(session_id, items, epoch=epoch)
        await asyncio.sleep(HOLD)
        if self.stamp_between:
            self._clock.stamp()  # as another session's append would
        return results


async def lags_seen(tmp_path: Path, storage: AnsweredLate, events: int) -> tuple[float, float]:
    """The delivery lag's count and sum once ``events`` lone events reached a viewer."""
    server = BambooServer(ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path)), storage)
    await server.start()
    try:
        async with (
            attach(server, "lag", create=True, role="agent") as (agent, _),
            attach(server, "lag") as (viewer, _),
        ):
            for i in range(events):
                await agent.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
                await viewer.recv_type("event")
            status, text = await get(server, "/metrics")
            assert status == 200 and isinstance(text, str)
    finally:
        await server.stop()
    name = "bamboo_delivery_lag_seconds"
    return value(text, f"{name}_count"), value(text, f"{name}_sum")


async def test_a_fan_out_after_its_stamp_reads_the_time_since(tmp_path: Path) -> None:
    count, total = await lags_seen(tmp_path, AnsweredLate(), 3)
    assert count == 3
    assert 3 * HOLD * 0.9 <= total < 3 * HOLD + 5  # each held HOLD, none read as nothing


async def test_another_stamp_between_reads_the_same(tmp_path: Path) -> None:
    storage = AnsweredLate()
    storage.stamp_between = True
    count, total = await lags_seen(tmp_path, storage, 3)
    assert count == 3
    assert 3 * HOLD * 0.9 <= total < 3 * HOLD + 5


async def test_a_clock_held_ahead_reads_its_own_time_not_the_wall_clocks(
    tmp_path: Path,
) -> None:
    storage = AnsweredLate()
    storage._clock.saw(utcnow() + timedelta(hours=1))  # a store that holds a time ahead
    count, total = await lags_seen(tmp_path, storage, 3)
    assert count == 3
    # Held ahead, the store's clock runs at half speed (persistence/clock.py).
    assert 3 * HOLD * 0.5 * 0.9 <= total < 3 * HOLD + 5


def test_the_clock_times_its_last_stamp_and_any_other_time_alike() -> None:
    clock = StoreClock()
    first = clock.stamp()
    last = clock.stamp()
    time.sleep(0.05)
    since_last, since_first = clock.seconds_since(last), clock.seconds_since(first)
    assert 0.05 <= since_last < 5
    assert since_last <= since_first < since_last + 5
    assert clock.seconds_since(clock.now() + timedelta(seconds=10)) == 0.0  # never below 0
