"""A store one process holds (memory, JSONL, SQLite) whose clock is held ahead of its
machine's (the times it holds are ahead: its clock was a day on for a moment, then
NTP stepped it back) runs at half speed until the wall clock catches up
(persistence/clock.py). It stood still, a microsecond a stamp: a day of identical
times, events' ``ts`` and sessions' activity alike, and not one session expired that
day, since expiry is judged by that clock. And it says so every ``WARN_EVERY``
seconds while it lasts, with the gap, then once that it has caught up (it said so
once).

Stamps are compared with the monotonic clock read around them, which is what the held
clock runs on: no timing is assumed. Real stores in temp dirs."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import clock, open_storage
from bamboo_session.persistence.base import SessionExpired, Storage
from bamboo_session.protocol.models import Session, utcnow
from tests.instances import eventually
from tests.test_store_clock import KINDS, url_of


async def held_ahead(storage: Storage, by: timedelta) -> None:
    """The store holds a session's times ``by`` ahead of this machine's clock, as a
    clock that far ahead wrote them."""
    await storage.create_session(Session.new("ahead", user_id="u", ttl=7 * 86400))
    metadata = await storage.get_metadata("ahead")
    assert metadata is not None
    metadata.updated_at = metadata.last_activity_at = utcnow() + by
    await storage.import_metadata(metadata)


async def activity(storage: Storage, session_id: str) -> tuple[float, float, float]:
    """The session touched: its ``last_activity_at`` (seconds), with the monotonic
    clock read just before and just after."""
    before = time.monotonic()
    await storage.touch(session_id)
    after = time.monotonic()
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None
    return before, metadata.last_activity_at.timestamp(), after


@pytest.mark.parametrize("kind", KINDS)
async def test_a_clock_held_a_day_ahead_runs_at_half_speed_and_sessions_expire(
    kind: str, tmp_path: Path
) -> None:
    storage = await open_storage(url_of(kind, tmp_path), cleanup_interval=None)
    try:
        await held_ahead(storage, timedelta(days=1))
        await storage.create_session(Session.new("short", ttl=1, now=storage.now()))
        first_before, first, first_after = await activity(storage, "short")
        await eventually(lambda: time.monotonic() - first_after > 0.3, timeout=10)
        second_before, second, second_after = await activity(storage, "short")
        assert first > utcnow().timestamp() + 86000  # held a day ahead
        # Half the monotonic time between them, at least (the held clock reads it in
        # between), and less than all of it: the wall clock gains on it.
        assert second - first >= (second_before - first_after) * clock.HELD_RATE
        assert second - first < second_after - first_before

        async def expired() -> bool:
            try:  # a read: no activity, which would start the TTL again
                await storage.get_session_history("short")
            except SessionExpired:
                return True
            return False

        await eventually(expired, timeout=15)  # a TTL of 1 s runs 2 s at half speed
    finally:
        await storage.close()


async def test_the_warning_repeats_while_held_back_and_the_catch_up_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bounds made small: held 0.6 s ahead, past a bound of 0.1 s, a warning
    every 0.1 s at most, each with the gap; then the line that it has caught up."""
    monkeypatch.setattr(clock, "HELD_BACK_WARNING", timedelta(seconds=0.1))
    monkeypatch.setattr(clock, "WARN_EVERY", 0.1)
    caplog.set_level(logging.INFO, logger=clock.__name__)
    storage = await open_storage("memory://", cleanup_interval=None)
    try:
        await held_ahead(storage, timedelta(seconds=0.6))
        started = time.monotonic()

        async def caught_up() -> bool:
            await storage.touch("ahead")
            return any("caught up" in record.getMessage() for record in caplog.records)

        await eventually(caught_up, timeout=10)  # the gap closes at half a second a second
        lasted = time.monotonic() - started
    finally:
        await storage.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) >= 2, warnings  # said again while it lasted
    assert len(warnings) <= lasted / 0.1 + 1, warnings  # at most one per WARN_EVERY
    assert all("ahead of this machine's clock" in warning for warning in warnings)
    assert caplog.records[-1].getMessage() == "the store's clock has caught up with this machine's"
