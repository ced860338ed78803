"""What a connection's reader pushes in its own step goes to the sockets at the end of
the frame it handled (server/flush.py ``Flusher.frame_done``), not one turn of the
event loop later: a lone event's ack and its viewer's frame leave in the turn that
read it. Pushes from anything else (another session's actor, a store's answer, a
close) keep the flusher's turn, and none waits for a reader whose step awaits its
store.

The turns are counted as the server's loop makes them: its selector's polls per lone
event, over a real server and real WebSocket peers; the peers are websockets' blocking
client in a thread, so that their own work takes no turn of the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from bamboo_session.server import flush
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.gated_appends import GatedAppends
from tests.instances import eventually
from tests.support import attach, run_server, token

WARM_UP = 20
LONE_EVENTS = 200


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector, counting its polls (each a turn of the loop)."""

    polls = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.polls += 1
        return super().select(timeout)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _peer(port: int, session_id: str, **hello: Any) -> Iterator[ClientConnection]:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    subprotocols: Any = ["bamboo.v1"]
    with connect(url, subprotocols=subprotocols, compression=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", **hello}))
        assert json.loads(ws.recv(10))["type"] == "welcome"
        yield ws


def _until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(ws.recv(10))
        if frame["type"] == kind:
            return frame
        assert frame["type"] == "presence", frame


def _polls_per_lone_event(port: int, selector: CountingSelector) -> float:
    """Lone events in lockstep (each acked, and seen by the viewer, before the next is
    sent): the server's polls per event, after a warm-up."""
    with (
        _peer(port, "turns", create=True, role="agent") as agent,
        _peer(port, "turns") as viewer,
    ):
        polls = 0
        for index in range(WARM_UP + LONE_EVENTS):
            if index == WARM_UP:
                polls = selector.polls
            agent.send(json.dumps({"type": "event", "id": index, "event": token(f"t{index}")}))
            assert _until(agent, "ack")["seq"] == index + 1
            assert _until(viewer, "event")["seq"] == index + 1
        return (selector.polls - polls) / LONE_EVENTS


# Polls of the server's sockets per lone event, at most. The memory store: one for the
# frame, one more to run the reader it woke (asyncio runs a callback scheduled by a
# callback at the next turn): two. JSONL, fsync: those two, the commit begun at the next
# turn (persistence/jsonl/starts.py), the helper's answer, the reader resumed: five.
# The flusher's turn made them three and six.
POLLS = [("memory://", 2.5), (None, 5.5)]


@pytest.mark.parametrize(("store", "most"), POLLS, ids=["memory", "jsonl-fsync"])
def test_a_lone_event_is_written_in_the_turn_that_read_it(store: str | None, most: float) -> None:
    selector = CountingSelector()

    async def main() -> float:
        async with run_server(store=store, durability="fsync", ping_interval=None) as server:
            return await asyncio.to_thread(_polls_per_lone_event, server.port, selector)

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        polls = runner.run(main())
    assert polls < most, f"{polls:.2f} polls of the server's sockets per lone event"


async def test_a_reader_awaiting_its_store_holds_back_no_other_sessions_frames(
    tmp_path: Path,
) -> None:
    # One publisher's append is held in the store, in its reader's task. Meanwhile
    # another session's batch (appended by its actor's task), lone event (by its
    # reader) and ping are answered, and its viewer sees the events: none of it waits
    # for the held reader's step to end.
    storage = GatedAppends()
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), rate_limit=0)
    server = BambooServer(config.replace(ping_interval=None), storage)
    await server.start()
    try:
        async with (
            attach(server, "held", create=True, role="agent") as (held, _),
            attach(server, "free", create=True, role="agent") as (agent, _),
            attach(server, "free") as (viewer, _),
        ):
            await agent.recv_type("presence")  # the viewer joined
            storage.gate = gate = asyncio.Semaphore(0)
            await held.send({"type": "event", "id": "h", "event": token("held")})
            await eventually(lambda: storage.in_store == 1)
            storage.gate = None  # the next appends go straight on; the first stays held
            items = [{"event": token(f"b{i}")} for i in range(3)]
            acks = await agent.request({"type": "batch", "id": "b", "items": items}, "acks")
            assert acks["seqs"] == [1, 2, 3]
            lone = {"type": "event", "id": "l", "event": token("lone")}
            assert (await agent.request(lone, "ack"))["seq"] == 4
            seqs = [(await viewer.recv_type("event"))["seq"] for _ in range(4)]
            assert seqs == [1, 2, 3, 4]
            assert (await viewer.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"
            assert storage.in_store == 1  # still held all the while
            gate.release()
            assert (await held.recv_type("ack"))["seq"] == 1
    finally:
        await server.stop()


@pytest.mark.parametrize("tasks", [{}, None], ids=["unfilled", "absent"])
def test_a_lone_event_takes_one_turn_whatever_asyncio_keeps_of_its_running_tasks(
    tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[object]] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python 3.14's C tasks keep the running task on the thread's state: asyncio.tasks
    # still has its dict of them (for its Python tasks), never filled. A flusher that
    # took that dict's get on trust saw no reader ever, and every lone event took the
    # flusher's turn again (3 polls); one that checks the dict against
    # asyncio.current_task as it starts reads the task that way instead, as it does
    # where there is no dict at all.
    monkeypatch.setattr(flush, "_current_tasks", tasks)
    running = asyncio.current_task if tasks is None else tasks.get
    monkeypatch.setattr(flush, "_running_task", running, raising=False)  # (its reader before)
    test_a_lone_event_is_written_in_the_turn_that_read_it("memory://", 2.5)
