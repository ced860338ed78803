"""What a store's own log says while one file fails for good among good ones
(persistence/failure_log.py), on a JSONL store whose session log is a directory (EISDIR
at every open): the first failure once, as an error; the later ones at debug level;
the outage ends when that log takes an append again once none failed for the settle
interval, or at any append once none failed for the quiet interval; never at once at
another session's append, nor at once at its own (a store that flaps)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.failure_log import KINDS_TOLD, FailureLog
from bamboo_session.persistence.jsonl import appends
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import break_log, mend_log

FAILED_A = "appending to the log of session 'a' failed: [Errno 21] Is a directory"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[JsonlStorage]:
    """A store of sessions a, b and c, each with one event, a's log descriptor closed
    (two are kept open), so that its next append opens it again."""
    config = JsonlStorageConfig(tmp_path, max_open_logs=2)
    async with await JsonlStorage.open(config) as storage:
        for session_id in "abc":
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("first"))
        await storage._writer.flush()
        yield storage


async def fails(storage: JsonlStorage, session_id: str) -> None:
    with pytest.raises(StorageError, match="Is a directory"):
        await storage.append_event(session_id, AgentEvent.token("lost"))


def told(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The store's lines about its appends: (level, text)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == appends.__name__]


async def test_a_log_that_keeps_failing_is_told_once_until_it_takes_an_append(
    storage: JsonlStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=appends.__name__)
    storage._appends._failures.quiet = 3600.0  # the failures never stop for that long
    log = break_log(tmp_path, "a")
    for _ in range(4):  # a batch of each: a's append fails, b's and c's are stored
        await fails(storage, "a")
        await storage.append_event("b", AgentEvent.token("fine"))
        await storage.append_event("c", AgentEvent.token("fine"))
    (first, *later) = told(caplog)
    assert first[0] == logging.ERROR and first[1].startswith(FAILED_A), first
    assert "later failures are logged at debug level" in first[1]
    assert [level for level, _text in later] == [logging.DEBUG] * 3
    assert all(text.startswith(FAILED_A) for _level, text in later), later
    mend_log(log)
    assert (await storage.append_event("a", AgentEvent.token("back"))).seq == 2
    assert len(told(caplog)) == 4  # a's write may fail again at once (a flapping store)
    storage._appends._failures.settle = 0.0  # as if none had failed for that long
    assert (await storage.append_event("a", AgentEvent.token("back again"))).seq == 3
    ended = told(caplog)[4:]
    assert len(ended) == 1 and ended[0][0] == logging.WARNING, ended
    assert ended[0][1].startswith(
        "appends to the log of session 'a' succeed again; 3 more failed since the first"
        f" failure logged (the last: {FAILED_A}"
    ), ended
    await storage.append_event("b", AgentEvent.token("fine"))
    assert len(told(caplog)) == 5  # nothing more to tell


async def test_an_outage_ends_at_any_append_once_none_failed_for_the_quiet_interval(
    storage: JsonlStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log whose failure began the outage takes no append again (its session stopped
    writing): another session's append ends it once none failed for ``quiet`` seconds
    (0 here: at the first, as if the interval had passed); a later failure of the
    broken log begins an outage again, told at once."""
    caplog.set_level(logging.WARNING, logger=appends.__name__)
    failures = storage._appends._failures
    failures.quiet = 3600.0
    break_log(tmp_path, "a")
    await fails(storage, "a")
    await fails(storage, "a")
    await storage.append_event("b", AgentEvent.token("fine"))
    assert [level for level, _text in told(caplog)] == [logging.ERROR]
    failures.quiet = 0.0
    await storage.append_event("b", AgentEvent.token("fine"))
    level, ended = told(caplog)[1]
    assert level == logging.WARNING
    assert ended.startswith(
        "appends to the logs succeed again, none failed for 0 s; 1 more failed since the"
        f" first failure logged (the last: {FAILED_A}"
    ), ended
    await fails(storage, "a")
    assert [level for level, _text in told(caplog)] == [
        logging.ERROR,
        logging.WARNING,
        logging.ERROR,
    ]


async def test_a_failure_of_another_kind_in_an_outage_under_way_is_told_too(
    storage: JsonlStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """a's log fails for good (EISDIR) while b appends: one outage. Then d's log fails
    otherwise (a symbolic link to itself: ELOOP, as the disk filling would with ENOSPC):
    told as an error, once, not hidden at debug level behind a's; and a's failures
    again, and d's, at debug level."""
    caplog.set_level(logging.DEBUG, logger=appends.__name__)
    storage._appends._failures.quiet = 3600.0  # b's appends come within it
    await storage.create_session(Session.new("d"))  # no descriptor of its log yet
    d_log = JsonlStorageConfig(tmp_path).layout.log("d")
    d_log.unlink(missing_ok=True)
    d_log.symlink_to(d_log.name)
    break_log(tmp_path, "a")
    for _ in range(2):
        await fails(storage, "a")
        await storage.append_event("b", AgentEvent.token("fine"))
        with pytest.raises(StorageError, match="Too many levels of symbolic links"):
            await storage.append_event("d", AgentEvent.token("lost"))
    levels = [(level, text.split(" failed: ")[0]) for level, text in told(caplog)]
    assert levels == [
        (logging.ERROR, "appending to the log of session 'a'"),
        (logging.ERROR, "appending to the log of session 'd'"),
        (logging.DEBUG, "appending to the log of session 'a'"),
        (logging.DEBUG, "appending to the log of session 'd'"),
    ], told(caplog)
    assert "a failure of another kind, in an outage under way" in told(caplog)[1][1]


def test_the_kinds_of_failure_told_in_one_outage_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file system in trouble enough to fail in twenty ways: ``KINDS_TOLD`` errors, the
    rest at debug level; the next outage tells its kinds again."""
    caplog.set_level(logging.DEBUG, logger=__name__)
    failures = FailureLog(logging.getLogger(__name__), "appends to the logs")
    for errno in range(20):
        failures.failed("a", f"failed: errno {errno}", errno)
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == KINDS_TOLD
    failures.settle = 0.0  # as if none had failed for that long
    failures.succeeded("a")
    caplog.clear()
    failures.failed("b", "failed: errno 19", 19)
    failures.failed("b", "failed: errno 0", 0)
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]


def test_a_source_failing_and_succeeding_by_turns_is_one_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that flaps (Redis at its ``maxmemory``, a disk all but full): a's writes
    fail and succeed by turns, each failure within ``settle`` of the last. One error,
    no end, however many turns; the first success after ``settle`` ends it, with the
    count of the failures after the first."""
    caplog.set_level(logging.DEBUG, logger=__name__)
    failures = FailureLog(logging.getLogger(__name__), "appends to the logs")
    for _ in range(50):
        failures.failed("a", "failed: errno 28", 28)
        failures.succeeded("a")
    assert [r.levelno for r in caplog.records if r.levelno > logging.DEBUG] == [logging.ERROR]
    failures.settle = 0.0  # as if none had failed for that long
    failures.succeeded("a")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "appends to the logs succeed again; 49 more failed since the first failure logged"
        " (the last: failed: errno 28)"
    ], warnings
