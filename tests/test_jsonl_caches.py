"""The JSONL storage's memory caches (persistence/jsonl/caches.py) stay within their
bounds in bytes, and the storage stays correct whatever they dropped."""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import KEY_WINDOW, Appended, JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl.caches import (
    MESSAGE_BYTES,
    SESSION_SHARE,
    TAIL_BYTES,
    WINDOW_BYTES,
    KeyWindows,
    MessageCache,
)
from bamboo_session.persistence.keys import KEY_OVERHEAD_BYTES, KeyWindow, key_cost
from bamboo_session.protocol.codec import free_form_values
from bamboo_session.protocol.free_form import FREE_VALUE_BYTES
from bamboo_session.protocol.models import AgentEvent, Message, Session, ToolCall


def messages(*texts: str) -> list[tuple[Message, int]]:
    return [(Message.user(text), 100) for text in texts]


# What a 100-byte message weighs in the cache: its bytes, the object, and its
# metadata's values (an empty object: one).
EACH = 100 + MESSAGE_BYTES + free_form_values(Message.user("x")) * FREE_VALUE_BYTES


def share_of(messages: int) -> int:
    """A budget whose share per session holds that many 100-byte messages."""
    return SESSION_SHARE * (TAIL_BYTES + messages * EACH)


def test_the_message_cache_keeps_each_sessions_newest_within_its_share() -> None:
    cache = MessageCache(share_of(3))
    cache.extend("a", 0, messages("0", "1", "2"))
    assert [m.content for m in cache.get("a", 0, 3) or []] == ["0", "1", "2"]
    cache.extend("a", 3, messages("3"))
    assert cache.get("a", 0, 1) is None  # the oldest went
    assert [m.content for m in cache.get("a", 1, 4) or []] == ["1", "2", "3"]
    cache.extend("a", 7, messages("7"))  # not following: the tail starts again
    assert cache.get("a", 3, 4) is None and cache.get("a", 7, 8) is not None
    assert cache.bytes == TAIL_BYTES + EACH


def test_the_message_cache_weighs_the_values_a_messages_bytes_do_not_bound() -> None:
    # 2,000 empty objects are 6 KB of JSON and about 150 KB as Python objects.
    heavy = msgspec.structs.replace(Message.user("x"), metadata={"rows": [{}] * 2000})
    size = len(msgspec.json.encode(heavy))
    cache = MessageCache(share_of(20))
    assert TAIL_BYTES + size + MESSAGE_BYTES < cache.session_bytes  # its bytes would fit
    cache.extend("a", 0, [(heavy, size)])
    assert cache.get("a", 0, 1) is None  # its values do not: not kept
    assert cache.bytes == TAIL_BYTES
    cache.extend("a", 1, messages("light"))
    assert cache.get("a", 1, 2) is not None


@pytest.mark.parametrize("where", ["content", "metadata", "arguments", "metadata key"])
def test_the_message_cache_weighs_what_wide_strings_hold(where: str) -> None:
    """One emoji makes 100,000 ASCII characters a str of 4 bytes each: some 400 KB held
    for 100 KB of JSON. Weighed by its bytes, a cache of 32 MiB held 3.3 times that of
    such messages (40 of 900 KB: 267 MB of RSS, where ASCII ones took 109 MB)."""
    wide = ("a" * 100_000 + "\U0001f600").encode().decode()
    fields: dict[str, object] = {
        "content": {"content": wide},
        "metadata": {"metadata": {"k": [wide]}},
        "arguments": {"tool_calls": [ToolCall(id="t", name="f", arguments={"k": wide})]},
        "metadata key": {"metadata": {wide: 1}},
    }[where]
    message = msgspec.structs.replace(Message.user("x"), **fields)
    size = len(msgspec.json.encode(message))
    assert sys.getsizeof(wide) > 3 * size
    cache = MessageCache(SESSION_SHARE * 1024 * 1024)
    cache.extend("a", 0, [(message, size)])
    assert cache.get("a", 0, 1) is not None
    assert cache.bytes - TAIL_BYTES >= sys.getsizeof(wide)


def test_the_message_cache_drops_whole_sessions_past_its_budget() -> None:
    cache = MessageCache(share_of(3))
    for n in range(200):
        cache.extend(f"s{n}", 0, messages("x", "y"))
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == cache.max_bytes // (TAIL_BYTES + 2 * EACH)
    assert cache.get("s0", 0, 1) is None and cache.get("s199", 0, 2) is not None
    empty = MessageCache(0)
    empty.extend("a", 0, messages("x"))
    assert empty.get("a", 0, 1) is None and empty.bytes == 0


def test_key_windows_are_bounded_in_count_and_bytes() -> None:
    windows = KeyWindows(max_windows=3, max_bytes=2 * WINDOW_BYTES + 10 * (KEY_OVERHEAD_BYTES + 2))
    for n in range(5):
        window = KeyWindow()
        for i in range(3):
            window.add(f"k{i}", i + 1)
        windows.put(f"s{n}", window, busy=lambda _session_id: False)
        assert windows.bytes <= windows.max_bytes and len(windows) <= 3
    assert windows.get("s0") is None and windows.get("s4") is not None
    busy = KeyWindow()
    for i in range(20):  # over the budget alone, but appends are in flight
        busy.add(f"b{i:02d}", i + 1)
    windows.put("busy", busy, busy=lambda session_id: session_id == "busy")
    windows.trim(busy=lambda session_id: session_id == "busy")
    assert windows.get("busy") is busy and len(windows) == 1
    windows.forget_before("busy", 10_015)  # keys leave the window: their bytes too
    assert windows.bytes == WINDOW_BYTES + 5 * (KEY_OVERHEAD_BYTES + 3)


@pytest.mark.parametrize("retried", ["key-004", ""])  # "" is a key like any other
async def test_keys_stay_known_when_their_window_was_dropped(tmp_path: Path, retried: str) -> None:
    budget = 3 * WINDOW_BYTES + 30 * (KEY_OVERHEAD_BYTES + 8)
    config = JsonlStorageConfig(tmp_path, durability="os").with_caches(key_bytes=budget)
    keys = [retried if i == 4 else f"key-{i:03d}" for i in range(10)]
    async with await JsonlStorage.open(config) as storage:
        for n in range(10):
            await storage.create_session(Session.new(f"s{n}"))
            for key in keys:
                await storage.append_event(f"s{n}", AgentEvent.token("x"), key)
            assert storage._appends.keys.bytes <= budget
        assert len(storage._appends.keys) < 10  # windows were dropped...
        for n in range(10):  # ...and read again from the logs when needed
            again = await storage.append_event(f"s{n}", AgentEvent.token("x"), retried)
            assert again == Appended(5, duplicate=True)
        assert storage._appends.keys.bytes <= budget


async def test_a_retry_finds_its_key_when_the_window_was_dropped_before_its_append(
    tmp_path: Path,
) -> None:
    # A cache that holds one window: s1's, read from its log for A, is dropped for s2's
    # (read for B in the same turns) before A resumes; C, A's retry a few turns later
    # while A is not written yet, read s1's window again from the log, without A's key,
    # and was stored as a new event (23 retries of 400 before).
    config = JsonlStorageConfig(tmp_path, durability="os").with_caches(
        key_bytes=WINDOW_BYTES + 2000
    )
    stored_twice = []
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("s1", "s2", "s3"):
            await storage.create_session(Session.new(session_id))
        for i in range(300):
            await storage.append_event("s3", AgentEvent.token("x"), f"z{i}")  # drops s1's, s2's
            first = asyncio.ensure_future(
                storage.append_event("s1", AgentEvent.token("x"), f"k{i}")
            )
            other = asyncio.ensure_future(
                storage.append_event("s2", AgentEvent.token("x"), f"j{i}")
            )
            for _ in range(i % 12):
                await asyncio.sleep(0)
            retry = asyncio.ensure_future(
                storage.append_event("s1", AgentEvent.token("x"), f"k{i}")
            )
            appended, _, again = await asyncio.gather(first, other, retry)
            if not appended.duplicate and not again.duplicate:
                stored_twice.append(i)
    assert stored_twice == []


async def test_a_key_window_read_while_its_append_was_written_holds_its_key(
    tmp_path: Path,
) -> None:
    # The same race one step on: C found no window (A's was dropped before A resumed)
    # and began reading s1's log; A resumed, kept its window again and was written,
    # then that window was dropped too (no append in flight any more), all while C's
    # read waited for a thread. C kept what it read, the log as it was when its read
    # began, without A's key: A's retry was stored as a new event.
    config = JsonlStorageConfig(tmp_path, durability="os")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s1"))
        appends, jobs = storage._appends, storage._jobs
        window = await appends.key_window("s1")  # A's, read from the log
        appends.keys.drop("s1")  # dropped for another session's before A resumed
        release = threading.Event()
        held = [asyncio.ensure_future(jobs.run(release.wait)) for _ in range(jobs.threads)]
        for _ in range(3):  # every file thread taken: C's read waits for one
            await asyncio.sleep(0)
        reading = asyncio.ensure_future(appends.key_window("s1"))  # C's
        for _ in range(3):
            await asyncio.sleep(0)
        assert not reading.done()
        appends.keys.put("s1", window, appends._busy)  # A resumed: its window kept again
        await appends.append(storage._record("s1"), [(AgentEvent.token("x"), "k")], window)
        appends.keys.drop("s1")  # dropped again for another session's: A is written
        release.set()
        await asyncio.gather(*held)
        await reading
        again = await storage.append_event("s1", AgentEvent.token("x"), "k")
        assert again.duplicate, "the retry was stored as a new event"


async def test_histories_stay_whole_with_a_tiny_message_cache(tmp_path: Path) -> None:
    budget = share_of(5)
    config = JsonlStorageConfig(tmp_path, durability="os").with_caches(message_bytes=budget)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        for i in range(100):
            await storage.append_message("s", Message.user(f"message {i}"))
            assert storage._messages.bytes <= budget
        history = await storage.get_session_history("s")
        assert [m.content for m in history] == [f"message {i}" for i in range(100)]
        page = await storage.get_history_page("s", 3, before=50)
        assert [m.content for m in page.messages] == ["message 47", "message 48", "message 49"]


@pytest.mark.parametrize("widest", ["\x80", "\xff", "\u0100", "\uffff", "\U00010000", "\U0010ffff"])
def test_a_key_counts_its_str_by_its_widest_character(widest: str) -> None:
    """Each side of every step of a str's width (1, 2, 4 bytes a character): one
    character past a step makes all 128 of the key as wide as it."""
    key = ("a" * 127 + widest).encode().decode()
    msgspec.json.encode(key)  # its UTF-8 copy, kept
    assert key_cost(key) - KEY_OVERHEAD_BYTES + sys.getsizeof("") >= sys.getsizeof(key)


@pytest.mark.parametrize(  # 1, 2 (latin-1), 2, 4 bytes of UTF-8; one wide character
    "tail", ["a" * 120, "é" * 120, "中" * 120, "😀" * 120, "a" * 119 + "😀"]
)
def test_a_key_window_counts_at_least_what_its_keys_hold(tail: str) -> None:
    """A key of 128 characters is at most 128 of any width (protocol: characters); a
    byte budget must count what they hold, and the UTF-8 copy CPython keeps of a key
    once it was encoded (written to a log) too. Counted by length alone, a window of
    keys of 128 emoji held 2.4 times what it counted, 3.9 times once written; one emoji
    makes a str of 4 bytes a character. Checked at every size up to a full window, as
    its dict grows in steps, with every key encoded (the most a key holds)."""
    keys = [(f"{i:08d}" + tail).encode().decode() for i in range(KEY_WINDOW)]
    for key in keys:
        msgspec.json.encode(key)  # as the log's writer does: its UTF-8 stays cached
    # CPython keeps freed objects for reuse, allocated before tracing began, so unseen:
    # up to 2,000 2-tuples (a window built from them looked 56 bytes a key lighter),
    # 80 dicts and 80 small dict tables, 16 deque blocks of 528 bytes. What ran before
    # in this process decides how many are kept: hold enough of each that the
    # window's own are new.
    reused = (
        [(i, -i) for i in range(4000)],
        [{"k": i} for i in range(160)],
        [collections.deque([i]) for i in range(32)],
    )
    keys_held = 0
    short_by = []
    tracemalloc.start()
    try:
        window = KeyWindow()
        for seq, key in enumerate(keys, 1_000):  # seqs past the ints CPython shares
            window.add(key, seq)
            # The keys' own memory was allocated before tracing: add it.
            keys_held += sys.getsizeof(key)
            held = tracemalloc.get_traced_memory()[0] + keys_held
            if window.bytes + WINDOW_BYTES < held:
                short_by.append((len(window), held - window.bytes - WINDOW_BYTES))
    finally:
        tracemalloc.stop()
    assert not short_by, short_by[:5]
    assert [len(held_back) for held_back in reused] == [4000, 160, 32]
    window.forget_before(1_000 + 2 * len(keys))
    assert window.bytes == 0 and len(window) == 0
