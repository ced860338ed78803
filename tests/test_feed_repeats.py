"""A store at fault whose reads hand out events twice: each connection still gets each
event once, in order; the repeats are counted (``bamboo_events_repeated_total``) and
logged once for the session, not once per batch."""

from __future__ import annotations

from typing import Any

import msgspec
from structlog.testing import capture_logs

from bamboo_session.persistence.feed import READ_BEHIND_BYTES
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import StoredEvent
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.receiver import Receiver

# Past the feed's buffer (1 MiB), so that its subscriber reads them from the store.
BIG_EVENTS = 20
BIG_EVENT = "x" * 60_000
# What one read from the store brings of them (the feed's budget for a read): the
# repeats of the first read are the ones the warning names.
FIRST_READ = READ_BEHIND_BYTES // len(msgspec.json.encode(AgentEvent.token(BIG_EVENT)))


class RepeatingReads(MemoryStorage):
    """The in-memory store whose reads return each page twice over, as a store whose
    read path was at fault would (the feed trusts a page to be in order, once)."""

    async def read_events(self, *args: Any, **kwargs: Any) -> list[StoredEvent]:
        page = await super().read_events(*args, **kwargs)
        return page + page


def repeats_counted(manager: SessionManager) -> float | None:
    return manager.metrics.registry.get_sample_value("bamboo_events_repeated_total")


async def receive_seqs(receiver: Receiver, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        event = await receiver.recv()
        assert event is not None, receiver.close_reason
        seqs.append(event.seq)
    return seqs


async def test_events_a_store_reads_twice_reach_a_viewer_once_and_are_logged_once() -> None:
    manager = SessionManager(SessionManagerConfig(), RepeatingReads())
    try:
        session_id = (await manager.create_session("u1")).id
        receiver = await manager.connect_session(session_id)
        big = [(AgentEvent.token(BIG_EVENT), None)] * BIG_EVENTS
        with capture_logs() as logs:
            await manager.append_events(session_id, big)
            assert await receive_seqs(receiver, BIG_EVENTS) == list(range(1, 21))
            await manager.append_events(session_id, big)  # read twice over again
            assert await receive_seqs(receiver, BIG_EVENTS) == list(range(21, 41))
            # The next event comes next: no repeat was queued ahead of it.
            await manager.append_event(session_id, AgentEvent.token("last"))
            assert await receive_seqs(receiver, 1) == [41]
        assert repeats_counted(manager) == 2 * BIG_EVENTS
        (warning,) = [line for line in logs if line["log_level"] == "warning"]
        assert FIRST_READ < BIG_EVENTS  # so the later reads' repeats were not logged
        assert warning["repeated"] == FIRST_READ and warning["seqs"] == f"1..{FIRST_READ}"
        assert warning["published_seq"] == FIRST_READ
    finally:
        await manager.close()
