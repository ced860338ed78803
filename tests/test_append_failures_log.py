"""What the log says while a store fails appends, on a JSONL store whose sync helper
really fails (tests/failing_sync_helper.py, EIO at each armed sync): the first failure
of an outage is logged at once with its error, later ones only as a count at most once
per interval (how many, their events, over how many sessions, the last error), and the
outage ends at the next append of the session whose failure began it, or of any session
once none failed for a quiet interval; ``bamboo_events_failed_total`` counts every
event of a failed append."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionLogFailed,
    StorageError,
)
from bamboo_session.persistence.jsonl import appends
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from tests.jsonl_support import break_log, mend_log
from tests.test_jsonl_replace_failures import (  # noqa: F401 (the fixture)
    FailingSync,
    fail_sync_fixture,
)

SESSIONS = tuple("abcdefgh")  # each fails once: its next append cuts back in a thread


def lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The captured lines about failing appends."""
    about = {"append failed", "appends failing", "appends succeed again"}
    return [line for line in logs if line["event"] in about]


async def fail_append(
    manager: SessionManager, fail_sync: FailingSync, session_id: str, events: int = 1
) -> None:
    fail_sync.arm()
    items = [(AgentEvent.token(f"{session_id}{n}"), None) for n in range(events)]
    with pytest.raises(StorageError):
        await manager.append_events(session_id, items)
    assert fail_sync.fired()


def failed_total(manager: SessionManager) -> float:
    value = manager.metrics.registry.get_sample_value("bamboo_events_failed_total")
    assert value is not None
    return value


async def test_an_outage_is_logged_once_then_counted_then_ended(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path / "store")) as storage:
        async with SessionManager(SessionManagerConfig(), storage) as manager:
            for session_id in SESSIONS:  # each log written once: its appends sync the WAL only
                await manager.create_session(session_id=session_id)
                await manager.append_event(session_id, AgentEvent.token("first"))
            failures = manager.append_health.failures
            with capture_logs(processors=[merge_contextvars]) as logs:  # as served
                await fail_append(manager, fail_sync, "a", events=2)
                (first,) = lines(logs)
                assert (first["log_level"], first["session_id"]) == ("error", "a")
                assert "Input/output error" in first["error"] and first["count"] == 2
                for session_id in "bcde":  # within the interval: counted
                    await fail_append(manager, fail_sync, session_id)
                assert lines(logs) == [first]
                failures.every = 0.0  # the interval is over at the next failure
                await fail_append(manager, fail_sync, "f", events=3)
                summary = lines(logs)[1]
                assert summary["log_level"] == "error"
                assert summary["event"] == "appends failing"
                assert (summary["failed"], summary["events"], summary["sessions"]) == (5, 7, 5)
                assert "Input/output error" in summary["last_error"]
                assert "session_id" not in summary  # of the process, not of session f
                failures.every = 3600.0
                await fail_append(manager, fail_sync, "g")  # counted, not yet told
                assert (await manager.append_event("a", AgentEvent.token("back"))).seq == 2
                assert len(lines(logs)) == 2  # a flapping store fails again at once: not over
                failures.settle = 0.0  # as if none had failed for that long
                assert (await manager.append_event("a", AgentEvent.token("back again"))).seq == 3
                await manager.append_event("b", AgentEvent.token("still well"))
            assert [line["event"] for line in lines(logs)] == [
                "append failed",
                "appends failing",
                "appends succeed again",
            ]
            ended = lines(logs)[2]
            assert (ended["log_level"], ended["failed"], ended["not_summarised"]) == ("info", 7, 1)
            assert "session_id" not in ended
            assert failed_total(manager) == 2 + 4 + 3 + 1
            with capture_logs() as logs:  # a new outage is told at once again
                await fail_append(manager, fail_sync, "h")
            assert [line["event"] for line in lines(logs)] == ["append failed"]


async def test_what_no_line_told_is_told_at_the_stop_its_sessions_counted_to_a_bound(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    """An outage under way when the manager closes, its later failures not yet told:
    the close tells them (else no line ever would), and the distinct sessions of a
    summary are counted up to ``sessions_counted``, what it keeps of them bounded."""
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path / "store")) as storage:
        with capture_logs() as logs:
            async with SessionManager(SessionManagerConfig(), storage) as manager:
                for session_id in "abcd":
                    await manager.create_session(session_id=session_id)
                    await manager.append_event(session_id, AgentEvent.token("first"))
                manager.append_health.failures.sessions_counted = 2
                for session_id in "abcd":  # a told at once, then three counted
                    await fail_append(manager, fail_sync, session_id, events=2)
                assert [line["event"] for line in lines(logs)] == ["append failed"]
    summary = lines(logs)[1:]
    assert [line["event"] for line in summary] == ["appends failing"]
    assert (summary[0]["failed"], summary[0]["events"], summary[0]["sessions"]) == (3, 6, 2)
    assert "Input/output error" in summary[0]["last_error"]


async def test_a_session_whose_appends_keep_failing_among_good_ones_makes_one_outage(
    tmp_path: Path,
) -> None:
    """Session x's log is broken for good (a directory at its path) while b appends:
    one outage, told once, which b's appends do not end; it ends at an append of any
    session once none failed for ``quiet`` seconds (0 here: as if they had passed), or
    at an append of x, whose failure began it."""
    base = tmp_path / "store"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        async with SessionManager(SessionManagerConfig(), storage) as manager:
            for session_id in "xb":
                await manager.create_session(session_id=session_id)
            log = break_log(base, "x")
            failures = manager.append_health.failures
            failures.quiet = 3600.0  # b's appends come well within it, however slow
            with capture_logs(processors=[merge_contextvars]) as logs:
                for n in range(3):
                    with pytest.raises(StorageError, match="Is a directory"):
                        await manager.append_event("x", AgentEvent.token(f"lost{n}"))
                    await manager.append_event("b", AgentEvent.token(f"fine{n}"))
                told = [(line["event"], line.get("session_id")) for line in lines(logs)]
                assert told == [("append failed", "x")]
                failures.quiet = 0.0
                await manager.append_event("b", AgentEvent.token("fine"))
                with pytest.raises(StorageError, match="Is a directory"):
                    await manager.append_event("x", AgentEvent.token("lost again"))
                failures.quiet = 3600.0
                failures.settle = 0.0  # x's next append comes as if none failed for long
                mend_log(log)
                assert (await manager.append_event("x", AgentEvent.token("back"))).seq == 1
    told = [(line["event"], line["log_level"]) for line in lines(logs)]
    assert told == [
        ("append failed", "error"),
        ("appends succeed again", "info"),
        ("append failed", "error"),
        ("appends succeed again", "info"),
    ]
    quiet, back = lines(logs)[1], lines(logs)[3]
    assert (quiet["failed"], quiet["ended_by"]) == (3, "0 s without a failure")
    assert (back["failed"], back["ended_by"]) == (
        1,
        "an append of session 'x', whose failure began it",
    )
    assert "session_id" not in quiet and "session_id" not in back


async def test_a_failure_of_the_store_in_an_outage_of_one_sessions_own_is_told_at_once(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    """x's own log fails among b's good appends: an outage, told once, its later
    failures counted. Then the disk fails (EIO at the WAL's sync, for real): that first
    failure of the store's is told at once too, as ``/readyz`` turns 503 then, not left
    for the next summary; the ones after it are counted."""
    base = tmp_path / "store"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        async with SessionManager(SessionManagerConfig(), storage) as manager:
            for session_id in "xbc":
                await manager.create_session(session_id=session_id)
            for session_id in "bc":  # each log written once: its appends sync the WAL only
                await manager.append_event(session_id, AgentEvent.token("first"))
            break_log(base, "x")
            health = manager.append_health
            health.alone_within = 3600.0  # b's append comes within it, however slow
            health.failures.every = 3600.0  # no summary line, however long the test takes
            with capture_logs(processors=[merge_contextvars]) as logs:
                for n in range(2):
                    with pytest.raises(SessionLogFailed, match="Is a directory"):
                        await manager.append_event("x", AgentEvent.token(f"lost{n}"))
                assert health.failure is None  # x's own: /readyz stays ready
                await fail_append(manager, fail_sync, "b", events=2)
                assert health.failure is not None
                await fail_append(manager, fail_sync, "c")
    told = [(line["event"], line.get("session_id")) for line in lines(logs)]
    assert told == [("append failed", "x"), ("append failed", "b")]
    store = lines(logs)[1]
    assert "Input/output error" in store["error"] and store["count"] == 2


async def test_a_session_that_fails_again_seconds_later_is_still_the_same_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """x's client tries again 1.2 s after its failure, b appending meanwhile: at the
    default ``quiet`` (a 1 s one told an error and an end at each such retry), still one
    outage, told once; the store's own log (``failure_log.QUIET``) likewise."""
    caplog.set_level(logging.WARNING, logger=appends.__name__)
    base = tmp_path / "store"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        async with SessionManager(SessionManagerConfig(), storage) as manager:
            for session_id in "xb":
                await manager.create_session(session_id=session_id)
            break_log(base, "x")
            with capture_logs() as logs:
                for n in range(2):
                    with pytest.raises(StorageError, match="Is a directory"):
                        await manager.append_event("x", AgentEvent.token(f"lost{n}"))
                    for m in range(3):  # b's appends come after x's failure: not at once
                        await asyncio.sleep(0.4)
                        await manager.append_event("b", AgentEvent.token(f"fine{n}.{m}"))
                assert [line["event"] for line in lines(logs)] == ["append failed"]
    store_told = [r.levelno for r in caplog.records if r.name == appends.__name__]
    assert store_told == [logging.ERROR], caplog.text
