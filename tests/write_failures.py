"""Appending past a file-size limit, shared by the tests of every file-backed store.

The child's side, :func:`write_past_limit`: in a child process, with RLIMIT_FSIZE at
``limit`` bytes, append events, messages and batches of several events (one
``append_events`` call, stored whole or not at all) in concurrent waves until appends fail,
check that failed appends move nothing, lift the limit, append again, and print a
report as one JSON line. The parent's side, :func:`check_report`: the acknowledged
appends are gap-free, none of them is among the failed, and the store holds exactly
them, in order. The children (``jsonl_child.py``, ``sqlite_child.py``) import this
module as a script's sibling.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from collections.abc import Callable
from typing import Any

from bamboo_session.persistence import Storage, StorageError, failure_log
from bamboo_session.protocol.models import AgentEvent, Message, Session, StoredEvent

SESSION = "full"


# Seconds without a failure after which the child's stores end an outage at a success:
# shorter than ``failure_log.SETTLE``, to keep each run short, and long enough that a
# store that flaps within the outage (SQLite's WAL, folded after a failure, takes a
# small write before the file reaches the limit again) stays one outage under load.
SETTLE_IN_CHILD = 1.5


def end_outages_soon() -> None:
    """The child's stores end an outage at the first write that succeeds once none has
    failed for ``SETTLE_IN_CHILD`` seconds (tests/test_failure_log.py shows the real
    bound); :func:`write_past_limit` waits them out before its last appends."""
    failure_log.SETTLE = SETTLE_IN_CHILD


async def write_past_limit(
    storage: Storage, limit: int, reason_of: Callable[[StorageError], str]
) -> None:
    """Print the report of appending to one session past ``limit`` bytes of file;
    ``reason_of`` names each failure in the report."""
    await storage.create_session(Session.new(SESSION))
    acked: list[tuple[int, str, bool]] = []  # (seq, tag, is a message) of each ack
    failed: list[str] = []
    reasons: set[str] = set()
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    payload = "x" * 300

    async def append(tag: str, message: bool, size: int = len(payload)) -> None:
        text = tag + "x" * size
        try:
            if message:
                appended = await storage.append_message(SESSION, Message.user(text))
            else:
                appended = await storage.append_event(SESSION, AgentEvent.token(text))
        except StorageError as exc:
            failed.append(tag)
            reasons.add(reason_of(exc))
        else:
            acked.append((appended.seq, tag, message))

    async def append_batch(tags: list[str], size: int = len(payload)) -> None:
        items = [(AgentEvent.token(tag + "x" * size), None) for tag in tags]
        try:
            results = await storage.append_events(SESSION, items)
        except StorageError as exc:
            failed.extend(tags)
            reasons.add(reason_of(exc))
        else:
            acked.extend(
                (result.seq, tag, False) for result, tag in zip(results, tags, strict=True)
            )

    # Concurrent waves: the batch that crosses the limit fails, and so do the appends
    # queued behind it.
    wave = 0
    while not failed:
        wave += 1
        tasks = []
        for i in range(8):
            if i % 4 == 2:
                tags = [f"w{wave}.{i}.{j}|" for j in range(3)]
                tasks.append(asyncio.create_task(append_batch(tags)))
            else:
                tasks.append(asyncio.create_task(append(f"w{wave}.{i}|", i % 4 == 0)))
            if i % 3 == 2:  # let the writer take what is queued, so batches overlap
                await asyncio.sleep(0.0003)
        await asyncio.gather(*tasks)
    last_before = await storage.last_seq(SESSION)
    # Still over the limit (the failed wave was cut back, and what room it left is less
    # than the limit): every one fails, and nothing moves. Each is twice the limit: at
    # the limit itself, a store whose file had just been restarted from its start
    # (SQLite's WAL after a checkpoint) could fit it, give or take its page headers.
    for i in range(5):
        await append(f"again{i}|", i % 2 == 0, size=2 * limit)
    await append_batch(["again.b0|", "again.b1|"], size=limit)
    still_failing = await storage.last_seq(SESSION) == last_before

    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    await asyncio.sleep(SETTLE_IN_CHILD)  # the outage told as over at the next success
    await asyncio.gather(*(append(f"after{i}|", i % 3 == 0) for i in range(6)))
    history = [_tag_of(m.content) for m in await storage.get_session_history(SESSION)]
    events = [(e.seq, _tag(e)) for e in await storage.read_events(SESSION)]
    await storage.close()
    report = {
        "acked": sorted(acked),
        "failed": failed,
        "reasons": sorted(reasons),
        "still_failing": still_failing,
        "history": history,
        "events": events,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def check_report(report: dict[str, Any]) -> list[int]:
    """The assertions every store passes; returns the acknowledged seqs."""
    acked = [(seq, tag) for seq, tag, _message in report["acked"]]
    message_tags = [tag for _seq, tag, message in report["acked"] if message]
    seqs = [seq for seq, _tag in acked]
    assert seqs == list(range(1, len(seqs) + 1)), "acknowledged seqs have a gap"
    assert report["failed"], "the limit was never reached"
    assert report["still_failing"], "a failed append moved last_seq"
    assert any(tag.startswith("after") for _seq, tag in acked), "no append after the limit"
    # The store holds exactly the acknowledged appends, in seq order.
    assert [tuple(pair) for pair in report["events"]] == acked
    assert not set(report["failed"]) & {tag for _seq, tag in acked}
    assert report["history"] == message_tags
    return seqs


def assert_told_once(stderr: str, failure: str) -> None:
    """The child's log (stderr, Python's last-resort handler: warnings and errors)
    tells the outage's first ``failure`` once, with the OS's words, and then how many
    more failed, when writes succeed again: not a line per failed write."""
    lines = stderr.splitlines()
    told = [line for line in lines if line.startswith(failure)]
    assert len(told) == 1, stderr
    assert "later failures are logged at debug level" in told[0]
    again = [line for line in lines if " succeed again; " in line]
    assert len(again) == 1 and failure in again[0], stderr
    assert int(again[0].split("; ")[1].split()[0]) >= 1, again[0]


def _tag(event: StoredEvent) -> str:
    payload = event.event
    text = getattr(payload, "content", None)
    if text is None:
        text = payload.message.content  # type: ignore[union-attr]
    return _tag_of(str(text))


def _tag_of(text: str) -> str:
    return text.split("|")[0] + "|"
