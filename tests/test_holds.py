"""Who meets a delete under way, and how long they wait for its outcome: the delete's
caller, an in-process append or close wait no longer than the read deadline
(StoreTimeout, on a Redis frozen with SIGSTOP mid-delete, or a JSONL delete held at its
directory sync), and the session stays held off until the store's delete has ended;
an HTTP read of the session or a hello waits for the outcome within its deadline (then
the session, or 404 / 4404; 503 / 1011 past it or at a stop), its token checked against
what it finds then; a second delete meanwhile is bounded the same way; a delete whose
caller is cancelled while the store deletes tells its clients the outcome the store
gives after all (4404 for a JSONL delete that ends in its thread), or 1011 when the
store undoes it or gives no answer by the read deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bamboo_session.persistence import SessionNotFound, open_storage
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.holds import OUTLIVED_DELETES_MAX
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.pages import StoreTimeout
from tests.auth_support import SECRET, make_token
from tests.held_delete_support import closed_with, scene
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.store_stalls_support import frozen
from tests.support import attach, get, open_peer, token

DEADLINE = 0.5
DELETED = {"type": "closed", "reason": "session deleted"}
NOT_DELETED = {"type": "closed", "reason": "session not deleted"}
OFFLINE = "session went offline, reconnect and retry"
EVENT_B = {"type": "event", "id": 2, "event": token("b")}


async def test_in_process_appends_and_closes_give_up_on_a_frozen_delete_at_the_read_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The store's delete hangs (its Redis stopped): the delete, and an append or a
    close that meets it, get StoreTimeout at the read deadline, not a wait as long as
    the store's; the session stays held off after its delete gave up (an append is
    still StoreTimeout, not SessionNotFound nor stored); once Redis answers, the
    store's delete ends, the session is gone, and the log says so (its caller cannot)."""
    redis = start_redis("redis")
    storage = await open_storage(redis.url(prefix=prefix_for(tmp_path)))
    config = SessionManagerConfig(store_read_timeout=DEADLINE)
    async with SessionManager(config, storage) as manager:
        await manager.create_session("u1", session_id="doomed")  # stored, no actor
        with capture_logs() as logs:
            with frozen(redis):
                deleting = asyncio.create_task(manager.delete_session("doomed"))
                await eventually(lambda: manager.actors.holds.holds("doomed"))
                with pytest.raises(StoreTimeout, match="no answer from the store"):
                    await manager.append_event("doomed", AgentEvent.token("late"))
                with pytest.raises(StoreTimeout, match="no answer from the store"):
                    await manager.close_session("doomed")
                with pytest.raises(StoreTimeout, match="no answer from the store"):
                    await deleting  # its deadline came before the append's
                with pytest.raises(StoreTimeout, match="no answer from the store"):
                    await manager.append_event("doomed", AgentEvent.token("later"))
            await eventually(lambda: not manager.actors.holds.holds("doomed"), timeout=20)
        late = [entry for entry in logs if entry["event"].startswith("a delete ended after")]
        assert [(entry["session_id"], entry["outcome"]) for entry in late] == [
            ("doomed", "deleted")
        ], logs
        with pytest.raises(SessionNotFound):
            await manager.append_event("doomed", AgentEvent.token("after"))
    await storage.close()


async def test_deletes_a_frozen_store_leaves_unanswered_are_bounded(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis stopped: deletes of as many sessions as the bound give up at their
    deadline, their store deletes still held; one more is refused at once, nothing
    held nor asked of the store, instead of piling up behind them; once Redis answers,
    they end, and a delete is taken again."""
    redis = start_redis("redis")
    storage = await open_storage(redis.url(prefix=prefix_for(tmp_path)))
    config = SessionManagerConfig(store_read_timeout=DEADLINE)
    async with SessionManager(config, storage) as manager:
        holds = manager.actors.holds
        with frozen(redis):
            given_up = await asyncio.gather(
                *(manager.delete_session(f"s{i}") for i in range(OUTLIVED_DELETES_MAX)),
                return_exceptions=True,
            )
            assert all(isinstance(failure, StoreTimeout) for failure in given_up), given_up
            refused = f"the store has not answered {OUTLIVED_DELETES_MAX} deletes"
            with pytest.raises(StoreTimeout, match=refused):
                await manager.delete_session("one-more")
            assert len(holds.holding) == OUTLIVED_DELETES_MAX and not holds.holds("one-more")
        await eventually(lambda: not holds.holding, timeout=20)
        with pytest.raises(SessionNotFound):
            await manager.delete_session("one-more")
    await storage.close()


async def wait_a_little(task: asyncio.Task[tuple[int, object]]) -> None:
    """Gives ``task`` (an HTTP request) the time to reach the server and be answered if
    it is not held: one that is answered meanwhile is asserted on by its caller."""
    await asyncio.wait([task], timeout=DEADLINE)


async def test_an_http_read_mid_delete_gets_the_session_the_failed_delete_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET of a session whose delete the store holds (its directory sync) waits for
    the outcome: the delete fails and the session stays, so the GET is 200, not the 404
    that would tell its asker the session is gone."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id) as deleting:
            reads = [
                asyncio.create_task(get(s.server, f"/api/v1/sessions/{session_id}{tail}"))
                for tail in ("", "/events")
            ]
            await wait_a_little(reads[0])
            assert not [read.result() for read in reads if read.done()]  # no 404 meanwhile
            await deleting.fails()
            (status, body), (events_status, events) = await asyncio.gather(*reads)
        assert status == 200 and body["metadata"]["id"] == session_id, body
        assert events_status == 200 and [e["seq"] for e in events["events"]] == [1], events


async def test_an_http_read_mid_delete_is_404_once_the_delete_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id, fails=False) as deleting:
            read = asyncio.create_task(get(s.server, f"/api/v1/sessions/{session_id}"))
            await wait_a_little(read)
            assert not read.done(), read.result()
            deleting.release.set()
            await deleting.task
            status, body = await read
        assert status == 404 and body["error"]["code"] == "not_found", body


async def test_an_http_read_waits_for_a_delete_no_longer_than_its_read_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503 ``storage unavailable`` (ask again) while the delete is still held, never
    404, its caller gone (StoreTimeout) or not; once it fails, the session is served."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        session_id = await s.session_with_an_event()
        late = f"storage unavailable: no answer from the store within {DEADLINE:g} s"
        async with s.delete_held(session_id) as deleting:
            for _ in range(2):  # the first read's deadline is after the delete's
                status, body = await get(s.server, f"/api/v1/sessions/{session_id}/events")
                assert status == 503, body
                assert body["error"] == {"code": "internal", "message": late}
                await deleting.given_up()
            deleting.release.set()
            await s.delete_ended(session_id)
        status, body = await get(s.server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1], body


async def test_an_http_read_mid_delete_is_checked_against_the_session_the_failed_delete_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auth, another user's GETs of a session mid-delete (nothing to check their
    token against while the store does not list it) wait for the outcome: the delete
    fails, and they are 403, not served alice's session."""
    async with scene(tmp_path, monkeypatch, auth_secret=SECRET) as s:
        session_id = await s.session_with_an_event(token=make_token("alice"))
        bob = {"Authorization": f"Bearer {make_token('bob')}"}
        async with s.delete_held(session_id) as deleting:
            reads = [
                asyncio.create_task(get(s.server, f"/api/v1/sessions/{session_id}{tail}", bob))
                for tail in ("", "/events")
            ]
            await wait_a_little(reads[0])
            assert not [read.result() for read in reads if read.done()]
            await deleting.fails()
            answers = await asyncio.gather(*reads)
        assert [status for status, _body in answers] == [403, 403], answers


async def test_a_stop_answers_an_http_read_waiting_for_a_delete_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read deadline is far off and the store's delete still held: the stop answers
    the waiting GET 503 ``server restarting`` (ask again), it neither hangs nor is 404."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=60) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id):
            read = asyncio.create_task(get(s.server, f"/api/v1/sessions/{session_id}"))
            await wait_a_little(read)
            assert not read.done(), read.result()
            await s.server.stop()
            status, body = await read  # before the delete is let go
        assert status == 503, body
        assert body["error"] == {"code": "internal", "message": "server restarting"}


async def test_a_delete_cancelled_while_its_store_deletes_tells_clients_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSONL store's delete runs to its end in its thread whatever its caller does:
    a caller cancelled while it is held at its directory sync leaves it to end, and the
    session's client is told 4404 ``session deleted`` (stop), not 1011 (resume), which
    sent it to resume a session then gone."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with attach(s.server, session_id) as (viewer, _welcome):
            async with s.delete_held(session_id, fails=False) as deleting:
                deleting.task.cancel()
                await wait_a_little(deleting.task)  # the store's answer still to come
                deleting.release.set()
                with pytest.raises(asyncio.CancelledError):
                    await deleting.task
            assert (await closed_with(viewer, 4404))[-1] == DELETED
        status, _body = await get(s.server, f"/api/v1/sessions/{session_id}")
        assert status == 404


async def test_a_delete_cancelled_while_its_store_undoes_it_tells_clients_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with attach(s.server, session_id) as (viewer, _welcome):
            async with s.delete_held(session_id) as deleting:
                deleting.task.cancel()
                await wait_a_little(deleting.task)
                deleting.release.set()
                with pytest.raises(asyncio.CancelledError):
                    await deleting.task
            assert (await closed_with(viewer, 1011))[-1] == NOT_DELETED
        assert await s.events(session_id) == [1]


async def test_a_delete_cancelled_with_no_answer_by_the_read_deadline_tells_clients_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's delete stays held at its directory sync past the read deadline of
    its caller's cancel: the caller gets its CancelledError (not an error of its own
    making) and the session's client 1011, resume; a read meanwhile is 503, not 404;
    the delete then fails in its thread, and the session is there."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        session_id = await s.session_with_an_event()
        async with attach(s.server, session_id) as (viewer, _welcome):
            async with s.delete_held(session_id) as deleting:
                deleting.task.cancel()
                await asyncio.wait([deleting.task])
                assert deleting.task.cancelled(), deleting.task.exception()
                assert (await closed_with(viewer, 1011))[-1] == NOT_DELETED
                status, body = await get(s.server, f"/api/v1/sessions/{session_id}")
                assert status == 503, body  # still held, after the 1011
                deleting.release.set()
                await s.delete_ended(session_id)
        assert await s.events(session_id) == [1]


@pytest.mark.parametrize("undone", [True, False], ids=["undone", "deleted"])
async def test_a_delete_the_store_does_not_answer_holds_the_session_until_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undone: bool
) -> None:
    """The store holds the delete (its directory sync) past the read deadline: its
    caller gets StoreTimeout, the session's client 1011 (resume), and the session stays
    held off while the store's delete goes on: a resuming hello gets 1011 ``storage
    unavailable``, a GET 503, a second delete StoreTimeout, never 4404 or 404 for a
    session that may come back, nor does an in-process get_session find it missing.
    Once the store's delete ends, the session is back with its event (the store undid
    the delete), or gone (a retry of the delete is then SessionNotFound)."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        session_id = await s.session_with_an_event()
        async with attach(s.server, session_id) as (viewer, welcome):
            resume = {"type": "hello", "last_seq": 1, "epoch": welcome["epoch"]}
            async with s.delete_held(session_id, fails=undone) as deleting:
                async with asyncio.timeout(DEADLINE + 10):  # unbounded, it waits 30 s
                    await deleting.given_up()
                assert (await closed_with(viewer, 1011))[-1] == NOT_DELETED
                async with open_peer(s.server, session_id) as peer, asyncio.timeout(DEADLINE + 10):
                    await peer.send(resume)
                    # Each waits for the store's delete within its own deadline, together.
                    hello, (status, body), second, got = await asyncio.gather(
                        closed_with(peer, 1011),
                        get(s.server, f"/api/v1/sessions/{session_id}"),
                        s.manager.delete_session(session_id),
                        s.manager.get_session(session_id),
                        return_exceptions=True,
                    )
                assert hello == [] and peer.ws.close_reason == "storage unavailable", hello
                assert status == 503, body
                assert isinstance(second, StoreTimeout), second
                assert isinstance(got, StoreTimeout), got  # not None: it may come back
                assert list(s.manager.actors.holds.holding) == [session_id]  # not a second
                deleting.release.set()
                await s.delete_ended(session_id)
        async with open_peer(s.server, session_id) as peer:
            await peer.send(resume)
            if undone:
                welcomed = await peer.recv()
                assert welcomed["type"] == "welcome" and welcomed["resumed"], welcomed
                assert welcomed["session"]["last_seq"] == 1, welcomed
            else:
                assert await closed_with(peer, 4404) == []
        status, body = await get(s.server, f"/api/v1/sessions/{session_id}/events")
        if undone:
            assert status == 200 and [e["seq"] for e in body["events"]] == [1], body
        else:
            assert status == 404, body
            with pytest.raises(SessionNotFound):  # the first delete's, after its StoreTimeout
                await s.manager.delete_session(session_id)
        assert (await s.manager.get_session(session_id) is None) is not undone


async def test_appends_and_states_mid_delete_are_refused_and_store_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection of a session whose delete the store holds: its append and its
    ``state`` get ``internal`` (reconnect and retry), as docs/protocol.md has it, and
    nothing is stored; the delete the store undoes then closes it with 1011."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with attach(s.server, session_id) as (viewer, _welcome):
            async with s.delete_held(session_id) as deleting:
                for request in (EVENT_B, {"type": "state", "id": 3, "state": "idle"}):
                    error = await viewer.request(request, "error")
                    assert error["code"] == "internal", error
                    assert error["message"].endswith(OFFLINE), error
                await deleting.fails()
            assert (await closed_with(viewer, 1011))[-1] == NOT_DELETED
        assert await s.events(session_id) == [1]
