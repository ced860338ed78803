"""What a store's own log says while one file fails for good among good ones
(persistence/failure_log.py), on a JSONL store whose session log is a directory (EISDIR
at every open): the first failure once, as an error; the later ones at debug level;
the outage ends when that log takes an append again, or when no append failed for the
quiet interval, never at once at another session's append."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
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
