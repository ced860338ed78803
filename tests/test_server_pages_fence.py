"""An ``events`` page and the ``last_seq`` that comes with it are of one log, on every
store (tests/storage_backends.py) and over both ways of asking (the WebSocket
``events`` request, server/pages.py ``events_reply``; HTTP ``GET
/api/v1/sessions/{id}/events``): the session is deleted, or expired and replaced,
and created again with five events between the read of the page (seqs 1 and 2, of the
old log) and the read of the last seq. The answer is the old session's not found,
never the old log's page with the new log's last seq (5). Two servers on Redis, the
old session's peer on the one that has not heard: tests/test_server_instances_fence.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bamboo_session.persistence import SessionNotFound, Storage
from bamboo_session.protocol.frames import EventsRequest
from bamboo_session.server.pages import events_reply
from tests.server_backends import pytest_generate_tests, server_store  # noqa: F401
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401
from tests.storage_contract_support import new_session, tokens
from tests.support import attach, get, run_server, token
from tests.test_storage_epoch_fence import taken_over


async def replace(store: Storage, ending: str) -> str:
    """``s1`` gone (``ending``) and created again with five events; the new epoch."""
    new = await taken_over(store, ending)
    await store.append_events("s1", tokens(*"abcde"))
    return new.metadata.epoch


def replaced_after_the_page(
    monkeypatch: pytest.MonkeyPatch, store: Storage, then: Callable[[], Awaitable[object]]
) -> list[object]:
    """From now on the store's first ``read_events`` runs ``then`` once it has read its
    page, before it returns it; the list holds what ``then`` returned, once it ran."""
    read_events = store.read_events
    done: list[object] = []

    async def read_then_replace(*args: Any, **kwargs: Any) -> Any:
        page = await read_events(*args, **kwargs)
        if not done:
            done.append(await then())
        return page

    monkeypatch.setattr(store, "read_events", read_then_replace)
    return done


@pytest.mark.parametrize("epoch", ["old", None])
@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_an_events_reply_is_of_one_log(
    store: Storage, monkeypatch: pytest.MonkeyPatch, ending: str, epoch: str | None
) -> None:
    """With the epoch of the connection's session, or without one (the epoch stored
    when the page is read)."""
    old = (await new_session(store, "s1", user_id="alice")).metadata.epoch
    await store.append_events("s1", tokens("a1", "a2"))
    done = replaced_after_the_page(monkeypatch, store, lambda: replace(store, ending))
    with pytest.raises(SessionNotFound):
        reply = await events_reply(
            store, "s1", EventsRequest(id=1), 1000, 1 << 20, old if epoch else None
        )
        pytest.fail(f"a page of one log with another's last seq: {reply}")
    assert done
    monkeypatch.undo()
    reply = await events_reply(store, "s1", EventsRequest(id=2), 1000, 1 << 20, done[0])  # type: ignore[arg-type]
    assert ([e.seq for e in reply.events], reply.last_seq) == ([1, 2, 3, 4, 5], 5)


@pytest.mark.usefixtures("server_store")  # every run_server here serves that store
async def test_an_http_events_page_is_of_one_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session whose access was checked is the one read: its page and its last
    seq, or 404 once it is gone."""
    async with run_server() as server:
        async with attach(server, "s1", create=True, user_id="alice") as (alice, _):
            for i in (1, 2):
                event = {"type": "event", "id": i, "event": token(f"a{i}")}
                assert (await alice.request(event, "ack"))["seq"] == i
        store = server.manager.storage

        async def delete_and_create() -> None:
            await server.manager.delete_session("s1")
            await new_session(store, "s1", user_id="bob")
            await store.append_events("s1", tokens(*"abcde"))

        done = replaced_after_the_page(monkeypatch, store, delete_and_create)
        status, body = await get(server, "/api/v1/sessions/s1/events")
        assert done
        assert status == 404, body  # not the old page with "last_seq": 5
        assert body["error"]["code"] == "not_found"
        status, body = await get(server, "/api/v1/sessions/s1/events")
        assert status == 200
        assert ([e["seq"] for e in body["events"]], body["last_seq"]) == ([1, 2, 3, 4, 5], 5)
