"""The in-process API's calls that name a session while the store holds a delete of it
(a JSONL store without WAL, its directory sync held): a create of that id, a
get-or-create and the reads wait for the delete's outcome within the read deadline,
then find what the store holds (the session the failed delete leaves, or none: a
create or a get-or-create then makes a new one), StoreTimeout past it;
``list_sessions`` waits for no delete, and lists what the store does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import SessionExists, SessionNotFound
from bamboo_session.server.manager import SessionManager
from bamboo_session.server.pages import StoreTimeout
from tests.held_delete_support import scene

DEADLINE = 0.5


def calls_naming(manager: SessionManager, session_id: str) -> dict[str, Awaitable[Any]]:
    """Each in-process call that names the session and meets a delete of it here."""
    return {
        "create_session": manager.create_session("u2", session_id=session_id),
        "ensure_session": manager.ensure_session(session_id, "u2"),
        "get_or_create_session": manager.get_or_create_session(session_id, "u2"),
        "get_metadata": manager.get_metadata(session_id),
        "read_events": manager.read_events(session_id),
        "get_session_history": manager.get_session_history(session_id),
    }


async def outcomes(calls: dict[str, Awaitable[Any]]) -> dict[str, Any]:
    """What each call returned or raised, by name."""
    answers = await asyncio.gather(*calls.values(), return_exceptions=True)
    return dict(zip(calls, answers, strict=True))


async def test_calls_mid_delete_get_the_session_the_failed_delete_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete fails (the store undoes it): a create of the id is SessionExists, a
    get-or-create the session with its event, the reads what it holds; none of them
    takes the session for missing while the store does not list it."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        before = await s.manager.get_metadata(session_id)
        assert before is not None
        async with s.delete_held(session_id) as deleting:
            calls = asyncio.create_task(outcomes(calls_naming(s.manager, session_id)))
            await asyncio.wait([calls], timeout=DEADLINE)  # time for any to go wrong
            assert not calls.done(), calls.result()
            listed = await s.manager.list_sessions()  # waits for no delete
            await deleting.fails()
            got = await calls
        # The JSONL store lists the session no more while it deletes it.
        assert session_id not in [meta.id for meta in listed.sessions]
        assert isinstance(got["create_session"], SessionExists), got
        stored = [got["ensure_session"], got["get_or_create_session"].metadata, got["get_metadata"]]
        assert [(meta.epoch, meta.last_seq) for meta in stored] == [(before.epoch, 1)] * 3, got
        assert [event.seq for event in got["read_events"]] == [1], got
        assert got["get_session_history"] == [], got  # it has no message
        listed = await s.manager.list_sessions()
        assert [meta.id for meta in listed.sessions] == [session_id]


async def test_a_get_or_create_mid_delete_waits_no_longer_than_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ensure_session``'s ``deadline`` (a hello's) bounds its wait for the delete,
    sooner than the read deadline (30 s here, as long as the store holds the delete)."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id) as deleting:
            deadline = asyncio.get_running_loop().time() + DEADLINE
            # A bound on the test, not on speed: unbounded, the call waits 30 s.
            async with asyncio.timeout(DEADLINE + 10):
                with pytest.raises(StoreTimeout, match="no answer from the store"):
                    await s.manager.ensure_session(session_id, "u2", deadline=deadline)
            await deleting.fails()
        assert [event.seq for event in await s.manager.read_events(session_id)] == [1]


@pytest.mark.parametrize("undone", [True, False], ids=["undone", "deleted"])
async def test_calls_mid_delete_wait_no_longer_than_the_read_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undone: bool
) -> None:
    """The store holds the delete past every caller's deadline: each call that names
    the session gets StoreTimeout, nothing created; once the store's delete ends, a
    create is SessionExists (the session is back) or a new session (it is gone)."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id, fails=undone) as deleting:
            await deleting.given_up()
            got = await outcomes(calls_naming(s.manager, session_id))
            late = [name for name, answer in got.items() if not isinstance(answer, StoreTimeout)]
            assert not late, got
            deleting.release.set()
            await s.delete_ended(session_id)
        if undone:
            with pytest.raises(SessionExists):
                await s.manager.create_session("u2", session_id=session_id)
            assert [event.seq for event in await s.manager.read_events(session_id)] == [1]
        else:
            with pytest.raises(SessionNotFound):
                await s.manager.read_events(session_id)
            created = await s.manager.create_session("u2", session_id=session_id)
            assert (created.metadata.user_id, created.metadata.last_seq) == ("u2", 0)


async def test_a_get_or_create_mid_delete_gets_a_new_session_once_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete succeeds: a get-or-create that waited for it makes a new session
    (another epoch, no event, its own owner), never the deleted one's metadata."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        before = await s.manager.get_metadata(session_id)
        assert before is not None
        async with s.delete_held(session_id, fails=False) as deleting:
            calls = {
                "ensure_session": s.manager.ensure_session(session_id, "u2"),
                "get_or_create_session": s.manager.get_or_create_session(session_id, "u2"),
            }
            waiting = asyncio.create_task(outcomes(calls))
            await asyncio.wait([waiting], timeout=DEADLINE)  # time for any to go wrong
            assert not waiting.done(), waiting.result()
            deleting.release.set()
            await deleting.task
            got = await waiting
        made = [got["ensure_session"], got["get_or_create_session"].metadata]
        assert {meta.epoch for meta in made} != {before.epoch}, got
        assert len({meta.epoch for meta in made}) == 1, got  # one creation, shared
        assert [(meta.user_id, meta.last_seq) for meta in made] == [("u2", 0)] * 2, got
        stored = await s.manager.get_metadata(session_id)  # what the store holds after
        assert stored is not None and stored.epoch == made[0].epoch, (stored, got)
