"""The storage contract's cap on a session's stored bytes (persistence/base.py,
``max_session_bytes``), on every backend of tests/storage_backends.py: an append that
would pass it stores nothing and raises SessionFull, a batch is refused whole,
duplicates are still answered, reads go on, and ``stored_bytes`` (what the cap is
checked against) survives a reopen.

Each store counts ``stored_bytes`` in its own measure (the JSONL store: its log's
lines), so these tests fill a session until the store refuses, rather than at a byte
computed in advance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import Appended, JsonlStorage, SessionFull, Storage
from bamboo_session.persistence.events import stored_size
from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture  # noqa: F401 (fixture)

CAP = 4096
PAYLOAD = "x" * 300  # an event of about 330 bytes of JSON: a dozen fit under CAP


def token(n: int) -> AgentEvent:
    return AgentEvent.token(f"{n}:{PAYLOAD}")


async def fill(store: Storage, session_id: str = "s1") -> int:
    """Append keyed tokens one by one until the store refuses one; the last seq."""
    seq = await store.last_seq(session_id)
    while True:
        before = await store.get_metadata(session_id)
        assert before is not None
        try:
            result = await store.append_event(session_id, token(seq + 1), f"f{seq + 1}")
        except SessionFull:
            after = await store.get_metadata(session_id)
            assert after is not None
            # Nothing of the refused append: not its seq, not its bytes.
            assert (after.last_seq, after.stored_bytes) == (seq, before.stored_bytes)
            assert before.stored_bytes + stored_size(encode_event(token(seq + 1)), "k") > CAP
            return seq
        seq += 1
        assert result == Appended(seq)
        after = await store.get_metadata(session_id)
        assert after is not None
        assert after.stored_bytes <= CAP
        assert after.stored_bytes >= before.stored_bytes + len(encode_event(token(seq)))


async def test_an_append_past_the_cap_stores_nothing(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_session_bytes=CAP)
    try:
        await store.create_session(Session.new("s1"))
        stored = await fill(store)
        assert 5 <= stored < CAP // 300
        # Refused again, a message too: the session is full, not the store broken.
        with pytest.raises(SessionFull, match="nothing was stored"):
            await store.append_message("s1", Message.user(PAYLOAD * 2))
        # Reads go on, and a retry of an accepted append is still its duplicate.
        events = await store.read_events("s1")
        assert [event.seq for event in events] == list(range(1, stored + 1))
        assert (await store.get_history_page("s1", 10)).messages == []
        assert await store.append_event("s1", token(1), "f1") == Appended(1, duplicate=True)
        # Other sessions are not held back by this one.
        await store.create_session(Session.new("s2"))
        assert await store.append_event("s2", token(1)) == Appended(1)
    finally:
        await store.close()


async def test_a_batch_past_the_cap_is_refused_whole(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_session_bytes=CAP)
    try:
        await store.create_session(Session.new("s1"))
        too_many = [(token(n), f"k{n}") for n in range(1, 21)]  # ~6.6 KB
        with pytest.raises(SessionFull):
            await store.append_events("s1", too_many)
        meta = await store.get_metadata("s1")
        assert meta is not None
        assert (meta.last_seq, meta.stored_bytes) == (0, 0)
        assert await store.read_events("s1") == []
        # None of its keys was taken: the first items go in, as fresh appends.
        assert await store.append_events("s1", too_many[:3]) == [
            Appended(1),
            Appended(2),
            Appended(3),
        ]
        # Duplicates add nothing: a batch of them alone is answered, however full.
        await fill(store)
        assert await store.append_events("s1", too_many[:2]) == [
            Appended(1, duplicate=True),
            Appended(2, duplicate=True),
        ]
        # A duplicate beside fresh items that do not fit: all of it refused.
        last = await store.last_seq("s1")
        with pytest.raises(SessionFull):
            await store.append_events("s1", [too_many[0], (token(99), "new")])
        assert await store.last_seq("s1") == last
    finally:
        await store.close()


async def test_without_a_cap_stored_bytes_count_what_is_stored(store_without_cap: Storage) -> None:
    store = store_without_cap
    await store.create_session(Session.new("s1"))
    items = [(token(1), "k1"), (token(2), None), (token(1), "k1")]  # the third: a duplicate
    await store.append_events("s1", items)
    await store.append_message("s1", Message.user("hello"), "m")
    meta = await store.get_metadata("s1")
    assert meta is not None
    events = await store.read_events("s1")
    counted = sum(stored_size(bytes(event.event_json), event.key) for event in events)
    if isinstance(store, JsonlStorage):
        assert meta.stored_bytes > counted  # its log's lines: seq, time and key around each
    else:
        assert meta.stored_bytes == counted


async def test_stored_bytes_survive_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip(f"{backend.name} keeps nothing across a reopen")
    store = await backend.open(tmp_path, max_session_bytes=CAP)
    try:
        await store.create_session(Session.new("s1"))
        stored = await fill(store)
        meta = await store.get_metadata("s1")
        assert meta is not None
    finally:
        await store.close()
    store = await backend.open(tmp_path, max_session_bytes=CAP)
    try:
        again = await store.get_metadata("s1")
        assert again is not None
        assert (again.last_seq, again.stored_bytes) == (stored, meta.stored_bytes)
        with pytest.raises(SessionFull):
            await store.append_event("s1", token(stored + 1), f"f{stored + 1}")
        assert await store.append_event("s1", token(1), "f1") == Appended(1, duplicate=True)
    finally:
        await store.close()


@pytest.fixture(name="store_without_cap")
async def store_without_cap_fixture(backend: Backend, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = await backend.open(tmp_path)
    try:
        yield storage
    finally:
        await storage.close()
