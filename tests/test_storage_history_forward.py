"""``get_history_from``, the storage contract's history read oldest first with a byte
budget (persistence/base.py), differentially: the same history in the four stores at
once (memory, JSONL, SQLite, and Redis on a redis-server of this test's own), the
durable ones reopened so that they read it from disk, and every edge of the budget
asked of all four. Where a budget falls clear of every message's end, the four must
answer the same; at a message's exact end, each is held to its own measure, the one its
``get_history_page`` counts by (the event's JSON; JSONL: its log line), read both ways.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import SessionNotFound, Storage, open_storage
from bamboo_session.persistence.base import HistoryPage
from bamboo_session.protocol.models import AgentEvent, Message, MessageEvent, Session
from tests.redis_server import RedisServer, prefix_for

decode = msgspec.json.decode

# Each at least 2,000 bytes, so that half of one is more than what a JSONL log line
# adds to its event (seq, time: about 60 bytes) over the whole history.
SIZES = (3000, 2000, 5000, 2000, 8000, 2500, 4000, 2000)
COUNT = len(SIZES)


def urls(tmp_path: Path, redis: RedisServer) -> dict[str, str]:
    return {
        "memory": "memory://",
        "jsonl": f"jsonl://{tmp_path / 'jsonl'}",
        "sqlite": f"sqlite://{tmp_path / 'store.db'}",
        "redis": redis.url(prefix=prefix_for(tmp_path)),
    }


async def fill(store: Storage) -> None:
    await store.create_session(Session.new("s1"))
    for i, size in enumerate(SIZES):
        await store.append_message("s1", Message.user(f"{i:04d}" + "x" * size))
        await store.append_event("s1", AgentEvent.token("between"))  # seqs are not indexes
    await store.create_session(Session.new("empty"))


@pytest.fixture
async def stores(
    tmp_path: Path, start_redis: Callable[[str], RedisServer]
) -> AsyncIterator[dict[str, Storage]]:
    """The four stores, each holding the same history; the durable ones reopened."""
    opened: dict[str, Storage] = {}
    try:
        for name, url in urls(tmp_path, start_redis("redis")).items():
            opened[name] = await open_storage(url, cleanup_interval=None)
            await fill(opened[name])
            if name != "memory":  # read from disk: nothing cached
                await opened[name].close()
                opened[name] = await open_storage(url, cleanup_interval=None)
        yield opened
    finally:
        for store in opened.values():
            await store.close()


async def measured(name: str, store: Storage, tmp_path: Path) -> list[int]:
    """Each message's size as the store counts it against a budget."""
    if name == "jsonl":  # its log lines, as its message index gives their lengths
        log = (tmp_path / "jsonl" / "events" / "s1.jsonl").read_bytes()
        lines = log.splitlines(keepends=True)
        return [len(line) for line in lines if decode(line)["event"]["type"] == "message"]
    events = await store.read_events("s1")
    return [event.size for event in events if isinstance(event.event, MessageEvent)]


def answer(page: HistoryPage) -> tuple[list[str], int, bool]:
    return [m.content[:4] for m in page.messages], page.start, page.has_more


def indexes(first: int, stop: int) -> list[str]:
    return [f"{i:04d}" for i in range(first, stop)]


async def test_the_four_stores_read_the_history_forwards_by_the_same_budget(
    stores: dict[str, Storage],
) -> None:
    # Budgets half a message past a message's end: every store stops at that message.
    sizes = await measured("memory", stores["memory"], Path())
    ask = {
        "all": (0, COUNT, None),
        "limit binds first": (1, 2, 10**9),
        "three from 2, and half the next": (2, COUNT, sum(sizes[2:5]) + sizes[5] // 2),
        "from 0, half of the second": (0, COUNT, sizes[0] + sizes[1] // 2),
        "the rest from 5": (5, COUNT, 10**9),
        "a start before 0 is 0": (-5, 2, None),
    }
    expected = {
        "all": (indexes(0, COUNT), 0, False),
        "limit binds first": (indexes(1, 3), 1, True),
        "three from 2, and half the next": (indexes(2, 5), 2, True),
        "from 0, half of the second": (indexes(0, 1), 0, False),
        "the rest from 5": (indexes(5, COUNT), 5, True),
        "a start before 0 is 0": (indexes(0, 2), 0, False),
    }
    for case, (start, limit, budget) in ask.items():
        answers = {
            name: answer(await store.get_history_from("s1", start, limit, max_bytes=budget))
            for name, store in stores.items()
        }
        assert answers == dict.fromkeys(stores, expected[case]), case


async def test_the_edges_of_the_forward_budget_on_every_store(
    stores: dict[str, Storage], tmp_path: Path
) -> None:
    for name, store in stores.items():
        await check_edges(store, await measured(name, store, tmp_path), name)


async def check_edges(store: Storage, sizes: list[int], name: str) -> None:
    async def forward(start: int, budget: int | None, limit: int = COUNT) -> object:
        return answer(await store.get_history_from("s1", start, limit, max_bytes=budget))

    # A budget smaller than the first message: that message alone.
    assert await forward(0, 1) == (indexes(0, 1), 0, False), name
    assert await forward(3, 0) == (indexes(3, 4), 3, True), name
    # Exactly one message's size: that one; one byte short of two: still one.
    assert await forward(0, sizes[0]) == (indexes(0, 1), 0, False), name
    assert await forward(0, sizes[0] + sizes[1] - 1) == (indexes(0, 1), 0, False), name
    # The exact end of a message: it is in; one byte less: it is not.
    exact = sum(sizes[2:5])
    assert await forward(2, exact) == (indexes(2, 5), 2, True), name
    assert await forward(2, exact - 1) == (indexes(2, 4), 2, True), name
    assert await forward(0, sum(sizes)) == (indexes(0, COUNT), 0, False), name
    # Counted as get_history_page counts the same messages, read newest first.
    page = await store.get_history_page("s1", 3, before=5, max_bytes=exact)
    assert answer(page) == (indexes(2, 5), 2, True), name
    page = await store.get_history_page("s1", 3, before=5, max_bytes=exact - 1)
    assert answer(page) == (indexes(3, 5), 3, True), name
    # The end and past it: an empty page at the end; an empty history: an empty page.
    assert await forward(COUNT, 0) == ([], COUNT, True), name
    assert await forward(COUNT + 100, None) == ([], COUNT, True), name
    assert await forward(COUNT - 1, 0, limit=0) == ([], COUNT - 1, True), name
    page = await store.get_history_from("empty", 0, 10, max_bytes=100)
    assert answer(page) == ([], 0, False), name
    # Another epoch's log, or no session: not found.
    epoch = await store.epoch("s1")
    assert answer(await store.get_history_from("s1", 0, 1, epoch=epoch))[0] == indexes(0, 1)
    with pytest.raises(SessionNotFound):
        await store.get_history_from("s1", 0, 1, epoch="another")
    with pytest.raises(SessionNotFound):
        await store.get_history_from("nope", 0, 1)
