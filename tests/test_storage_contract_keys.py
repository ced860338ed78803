"""The storage contract's idempotency (persistence/base.py), on every backend of
tests/storage_backends.py: a key seen again is a duplicate of its first seq (within one
batch too), keys are per session, forgotten after the window, kept across a reopen,
and an empty key is a key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bamboo_session.persistence import KEY_WINDOW, Appended, Storage
from bamboo_session.protocol.models import AgentEvent, Message
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens


async def test_a_key_seen_again_is_a_duplicate_of_its_first_seq(store: Storage) -> None:
    await new_session(store)
    assert await store.append_event("s1", AgentEvent.token("a"), "k1") == Appended(1)
    assert await store.append_event("s1", AgentEvent.token("b")) == Appended(2)
    again = await store.append_event("s1", AgentEvent.token("a again"), "k1")
    assert again == Appended(1, duplicate=True)
    assert await store.last_seq("s1") == 2
    events = await store.read_events("s1")
    assert [(e.seq, e.key) for e in events] == [(1, "k1"), (2, None)]


async def test_duplicates_within_one_batch(store: Storage) -> None:
    await new_session(store)
    items = [
        (AgentEvent.token("a"), "k"),
        (AgentEvent.token("b"), None),
        (AgentEvent.token("a'"), "k"),
        (AgentEvent.token("c"), "j"),
    ]
    assert await store.append_events("s1", items) == [
        Appended(1),
        Appended(2),
        Appended(1, duplicate=True),
        Appended(3),
    ]
    assert await store.append_message("s1", Message.user("m"), "j") == Appended(3, True)
    assert await store.last_seq("s1") == 3


async def test_keys_are_per_session(store: Storage) -> None:
    await new_session(store, "a")
    await new_session(store, "b")
    assert await store.append_event("a", AgentEvent.token("x"), "k") == Appended(1)
    assert await store.append_event("b", AgentEvent.token("x"), "k") == Appended(1)


async def test_a_key_is_forgotten_after_the_window(store: Storage) -> None:
    await new_session(store)
    await store.append_event("s1", AgentEvent.token("first"), "k")
    filler = tokens(*(["f"] * 1000))
    for _ in range(KEY_WINDOW // 1000 - 1):
        await store.append_events("s1", filler)
    await store.append_events("s1", tokens(*(["f"] * 999)))
    # 10,000 appends so far: the next one is the 10,000th after the key's, still in it.
    assert await store.append_event("s1", AgentEvent.token("x"), "k") == Appended(1, True)
    await store.append_event("s1", AgentEvent.token("f"))
    # Now the key's append is more than 10,000 appends back: it is new again.
    assert await store.append_event("s1", AgentEvent.token("x"), "k") == Appended(10_002)


async def test_keys_survive_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    await new_session(storage)
    await storage.append_events(
        "s1", [(AgentEvent.token("a"), "k1"), (AgentEvent.token("b"), "k2")]
    )
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        assert await storage.append_event("s1", AgentEvent.token("b"), "k2") == Appended(2, True)
        assert await storage.append_event("s1", AgentEvent.token("a"), "k1") == Appended(1, True)
        assert await storage.append_event("s1", AgentEvent.token("c"), "k3") == Appended(3)
        assert [e.key for e in await storage.read_events("s1")] == ["k1", "k2", "k3"]
    finally:
        await storage.close()


async def test_an_empty_key_is_a_key(store: Storage) -> None:
    # PROTOCOL.md: a key is a string, "" included; only None is no key.
    await new_session(store)
    items = [
        (AgentEvent.token("a"), ""),
        (AgentEvent.token("b"), None),
        (AgentEvent.token("a again"), ""),
    ]
    assert await store.append_events("s1", items) == [Appended(1), Appended(2), Appended(1, True)]
    assert await store.append_event("s1", AgentEvent.token("a"), "") == Appended(1, True)
    assert await store.append_message("s1", Message.user("m"), "") == Appended(1, True)
    assert await store.append_event("s1", AgentEvent.token("c")) == Appended(3)
    events = await store.read_events("s1")
    assert [(e.seq, e.key) for e in events] == [(1, ""), (2, None), (3, None)]


async def test_an_empty_key_survives_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    await new_session(storage)
    await storage.append_events("s1", [(AgentEvent.token("a"), ""), (AgentEvent.token("b"), None)])
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        assert await storage.append_event("s1", AgentEvent.token("a"), "") == Appended(1, True)
        retried = [(AgentEvent.token("a"), ""), (AgentEvent.token("c"), None)]
        assert await storage.append_events("s1", retried) == [Appended(1, True), Appended(3)]
        assert [e.key for e in await storage.read_events("s1")] == ["", None, None]
    finally:
        await storage.close()
