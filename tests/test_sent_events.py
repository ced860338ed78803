"""The check every event frame passes on its way to a connection's socket
(server/sent_events.py): a viewer gets each event once, in order, whatever way it came
(the flusher, the writer, a replay's page); one that would be sent twice is held back,
counted and logged; a gap closes a viewer that publishes nothing with 1011, and its
resume fills the gap from the log.

No path of the server is known to hand a connection an event twice any more (the room
guards its feed, a replay its pages): the tests of repeats put the second copy into a
viewer's outbox by hand, on a real server and a real viewer's socket. A gap comes from
a store whose feed loses an event, as a store at fault would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import random
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.feed import Feed
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol.client import BambooClient, ConnectionLost
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Pong
from bamboo_session.protocol.models import StoredEvent
from bamboo_session.server.actor import SessionActor
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.read_back import Replay
from bamboo_session.server.sent_events import GAP_REASON, PATHS
from tests.replay_support import publish
from tests.support import Peer, attach, run_server, stream_url, token


def counted(server: BambooServer, name: str) -> dict[str, float]:
    """``name``'s value on ``server`` for each path an event frame takes to a socket."""
    get = server.metrics.registry.get_sample_value
    return {path: get(name, {"path": path}) or 0.0 for path in PATHS}


def viewer_outbox(actor: SessionActor | None) -> Outbox:
    """The outbox of the session's one connection that is not its agent."""
    assert actor is not None
    [outbox] = [out for out in actor.room.outboxes.values() if out.role != "agent"]
    return outbox


async def seqs(peer: Peer, count: int) -> list[int]:
    return [(await peer.recv_type("event"))["seq"] for _ in range(count)]


def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["log_level"] == "warning"]


def event_out(seq: int) -> Outbound:
    event = msgspec.Raw(b'{"type":"token","content":"x"}')
    return Outbound.for_event(
        StoredEvent.from_json(seq, datetime.datetime.now(datetime.UTC), event)
    )


def test_the_check_lets_a_clean_stream_through_as_it_is_and_holds_back_the_rest() -> None:
    outbox = Outbox("c", "client", limit=10, session_id="s")
    outbox.sent_seq, outbox.expects_gaps = 4, False
    clean = [event_out(5), Outbound(Pong(id=1)), event_out(6)]
    assert outbox.to_socket(clean, "flush") is clean and outbox.sent_seq == 6
    pong, seven = Outbound(Pong(id=2)), event_out(7)
    # 5 and 6 went already: left out, the rest kept in order.
    assert outbox.to_socket([event_out(5), pong, event_out(6), seven], "writer") == [pong, seven]
    assert outbox.sent_seq == 7 and outbox.not_resent == 2 and outbox.closing is None


def test_a_gap_closes_a_viewer_at_once_and_a_publisher_may_have_one() -> None:
    viewer = Outbox("v", "client", limit=10, session_id="s")
    viewer.sent_seq, viewer.expects_gaps = 4, False
    five, seven, pong = event_out(5), event_out(7), Outbound(Pong(id=1))
    assert viewer.to_socket([five, seven, pong], "flush") == [five]  # none after the gap
    assert viewer.closing is not None and viewer.closing.code == CloseCode.INTERNAL_ERROR
    assert viewer.closing.reason == GAP_REASON and viewer.closing.overflow
    publisher = Outbox("p", "agent", limit=10, session_id="s")
    publisher.sent_seq, publisher.expects_gaps = 4, False
    publisher.expects_gaps = True  # it published 6 (SessionRoom.expect)
    frames = [five, seven, pong]
    assert publisher.to_socket(frames, "flush") is frames and publisher.closing is None


async def test_an_event_queued_again_reaches_a_viewer_once_and_is_logged_once() -> None:
    async with (
        run_server() as server,
        attach(server, "r", create=True, role="agent") as (agent, _),
        attach(server, "r") as (viewer, _),
    ):
        await agent.recv_type("presence")  # the viewer joined
        await publish(agent, 3)
        assert await seqs(viewer, 3) == [1, 2, 3]
        actor = server.manager.live_actor("r")
        outbox = viewer_outbox(actor)
        assert actor is not None and actor.room.ring is not None
        with capture_logs() as logs:
            for out in list(actor.room.ring)[1:]:  # 2 and 3, again, as live frames
                outbox.push(out)
            await publish(agent, 1)
            assert await seqs(viewer, 1) == [4]  # not 2: nothing came between
        assert counted(server, "bamboo_events_not_resent_total")["flush"] == 2
        (line,) = warnings(logs)
        assert line["connection_id"] == outbox.connection_id and line["session_id"] == "r"
        assert (line["seq"], line["sent_seq"], line["path"]) == (2, 3, "flush")


async def test_a_repeat_the_writer_sends_is_held_back_too() -> None:
    # permessage-deflate: websockets must compress each frame, so every frame goes
    # through the connection's writer task rather than the flusher.
    async with (
        run_server(compression=True) as server,
        attach(server, "w", create=True, role="agent") as (agent, _),
        connect(stream_url(server, "w"), compression="deflate") as ws,
    ):
        viewer = Peer(ws)
        await viewer.send({"type": "hello"})
        assert (await viewer.recv())["type"] == "welcome"
        await agent.recv_type("presence")
        await publish(agent, 2)
        assert await seqs(viewer, 2) == [1, 2]
        actor = server.manager.live_actor("w")
        assert actor is not None and actor.room.ring is not None
        viewer_outbox(actor).push(actor.room.ring[0])
        await publish(agent, 1)
        assert await seqs(viewer, 1) == [3]
        assert counted(server, "bamboo_events_not_resent_total")["writer"] == 1


async def test_a_replay_of_events_sent_already_sends_none_and_the_stream_goes_on() -> None:
    async with (
        run_server() as server,
        attach(server, "p", create=True, role="agent") as (agent, _),
        attach(server, "p") as (viewer, _),
    ):
        await agent.recv_type("presence")
        await publish(agent, 3)
        assert await seqs(viewer, 3) == [1, 2, 3]
        viewer_outbox(server.manager.live_actor("p")).push(Replay(1, 3))  # 2 and 3 again
        await publish(agent, 1)
        assert await seqs(viewer, 1) == [4]
        assert counted(server, "bamboo_events_not_resent_total") == {
            "flush": 0,
            "writer": 0,
            "replay": 2,
            "close": 0,
        }


LOST = 3


class LossyFeed(Feed):
    """A feed that loses event ``LOST`` from the copies it hands its subscribers."""

    def publish(self, session_id: str, events: list[StoredEvent], epoch: str | None = None) -> None:
        super().publish(session_id, [event for event in events if event.seq != LOST], epoch)


class LosesAnEvent(MemoryStorage):
    """The in-memory store, at fault: its feed loses event ``LOST``, from its copies and
    from the first read a subscriber makes of it, so that the feed hands out a gap. A
    replay's read, which names the log's epoch, gets it."""

    def __init__(self) -> None:
        super().__init__()
        self._feed = LossyFeed()
        self.losing = True

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
        *,
        epoch: str | None = None,
    ) -> list[StoredEvent]:
        page = await super().read_events(session_id, after_seq, limit, max_bytes, epoch=epoch)
        if epoch is not None or not self.losing:
            return page
        kept = [event for event in page if event.seq != LOST]
        self.losing = len(kept) == len(page)
        return kept


async def test_a_viewer_is_closed_at_a_gap_and_its_resume_fills_it(tmp_path: Path) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), rate_limit=0)
    server = BambooServer(config, LosesAnEvent())
    await server.start()
    try:
        async with (
            attach(server, "g", create=True, role="agent") as (agent, _),
            attach(server, "g") as (viewer, welcome),
        ):
            await agent.recv_type("presence")
            await publish(agent, 2)
            assert await seqs(viewer, 2) == [1, 2]
            with capture_logs() as logs:
                await publish(agent, 2)  # 3 and 4; the feed hands out 4 alone
                code, frames = await viewer.closed()
            assert code == CloseCode.INTERNAL_ERROR and viewer.ws.close_reason == GAP_REASON
            assert [frame for frame in frames if frame["type"] == "event"] == []
            (line,) = warnings(logs)
            assert (line["seq"], line["sent_seq"], line["path"]) == (4, 2, "flush")
            assert counted(server, "bamboo_event_gaps_total")["flush"] == 1
            epoch = welcome["epoch"]
            async with attach(server, "g", last_seq=2, epoch=epoch) as (resumed, again):
                assert again["resumed"] and again["replay"] == 2
                assert await seqs(resumed, 2) == [3, 4]  # from the log
                await publish(agent, 1)  # the publisher's stream was left alone
                assert await seqs(resumed, 1) == [5]
    finally:
        await server.stop()


class SilentFeed(Feed):
    """A feed that hands its subscribers no copy of event ``LOST`` nor of any after it."""

    def publish(self, session_id: str, events: list[StoredEvent], epoch: str | None = None) -> None:
        super().publish(session_id, [event for event in events if event.seq < LOST], epoch)


class LosesAnEventSilently(LosesAnEvent):
    """As :class:`LosesAnEvent`, but its feed tells nobody of event ``LOST`` and later
    ones: a subscriber reads them once told they are stored, as a close's catch-up
    tells it, and that read loses ``LOST``. The gap reaches a viewer's outbox right
    before the session's ``closed`` and its close."""

    def __init__(self) -> None:
        super().__init__()
        self._feed = SilentFeed()


async def test_a_gap_found_ahead_of_a_sessions_close_is_no_normal_end(tmp_path: Path) -> None:
    """A 1000 tells a client that it has the session's whole stream, and to stop: one
    held back from events at a gap must be closed 1011 instead, so that it resumes;
    refused then (the session is closed), the Python client asks the log and ends
    saying what it missed, rather than ending as if it had it all."""
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), rate_limit=0)
    server = BambooServer(config, LosesAnEventSilently())
    await server.start()
    try:
        async with (
            attach(server, "e", create=True, role="agent") as (agent, _),
            attach(server, "e") as (viewer, _),
        ):
            client = await BambooClient.connect(
                f"ws://127.0.0.1:{server.port}", "e", backoff_initial=0.01, backoff_max=0.05
            )
            await agent.recv_type("presence")
            await agent.recv_type("presence")  # both viewers joined
            await publish(agent, 2)
            assert await seqs(viewer, 2) == [1, 2]
            events = client.events()
            for seq in (1, 2):
                assert getattr(await anext(events), "seq", None) == seq
            await publish(agent, 2)  # 3 and 4, which the feed keeps quiet about
            await agent.request({"type": "state", "id": "end", "state": "closed"}, "ack")
            code, frames = await viewer.closed()
            assert (code, viewer.ws.close_reason) == (CloseCode.INTERNAL_ERROR, GAP_REASON)
            assert [frame for frame in frames if frame["type"] == "event"] == []
            with pytest.raises(ConnectionLost) as lost:
                await anext(events)
            assert lost.value.after_seq == 2
            await client.close()
            assert sum(counted(server, "bamboo_event_gaps_total").values()) == 2
    finally:
        await server.stop()


# -- viewers cut and resumed while events stream in ----------------------------------

EVENTS = 400
CONTENT = "x" * 2000  # a ring of 32 events: most resumes read pages from the store


async def test_viewers_cut_and_resumed_under_a_live_stream_get_each_event_once(
    tmp_path: Path,
) -> None:
    """Three viewers drop their connection (a reset, mid-stream) after a few events
    drawn at random and resume at once, while an agent streams 400 events: each resume
    is replayed from the ring or the store while live events queue behind it. One
    viewer reads through a small socket and pauses now and then, so that its replay's
    pages and live frames wait for room (and a page may be cut with 4429). Each must
    get 1..400 once, in order, and the server hold nothing back."""
    rng = random.Random()
    seed = rng.randrange(1 << 32)
    rng.seed(seed)
    settings = {
        "send_queue_frames": 16,
        "write_limit": 4096,
        "ring_size": 32,
        "replay_page_timeout": 0.3,
    }
    async with (
        run_server(tmp_path, **settings) as server,
        attach(server, "live", create=True, role="agent") as (agent, _),
    ):
        viewers = [Viewer(server, rng, slow=i == 0) for i in range(3)]
        following = [asyncio.create_task(v.follow()) for v in viewers]
        for start in range(0, EVENTS, 20):
            for i in range(start, start + 20):
                await agent.send({"type": "event", "id": i, "event": token(f"{i}:{CONTENT}")})
            for _ in range(20):
                await agent.recv_type("ack", timeout=30)
        await asyncio.wait_for(asyncio.gather(*following), 60)
        for viewer in viewers:
            assert viewer.problems == [] and viewer.seen == list(range(1, EVENTS + 1)), seed
            assert viewer.connections > 1, seed
        assert sum(counted(server, "bamboo_events_not_resent_total").values()) == 0, seed
        assert sum(counted(server, "bamboo_event_gaps_total").values()) == 0, seed
        assert server.metrics.registry.get_sample_value("bamboo_events_repeated_total") == 0


class Viewer:
    """A viewer that resumes after each of its connections ends, until it has seen
    every event; each connection it cuts itself after a few events."""

    def __init__(self, server: BambooServer, rng: random.Random, slow: bool) -> None:
        self.server = server
        self.rng = rng
        self.slow = slow
        self.seen: list[int] = []
        self.problems: list[str] = []
        self.epoch: str | None = None
        self.connections = 0

    async def follow(self) -> None:
        while len(self.seen) < EVENTS:
            # A slow viewer's socket takes little, and its client queues little: the
            # server's queue for it fills during a pause.
            options: dict[str, Any] = {}
            if self.slow:
                options = {"sock": await self._small_socket(), "max_queue": 4}
            with contextlib.suppress(ConnectionClosed):
                url = stream_url(self.server, "live")
                async with connect(url, close_timeout=1, **options) as ws:
                    self.connections += 1
                    await self._read(ws)

    async def _small_socket(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.server.port))
        return sock

    async def _read(self, ws: ClientConnection) -> None:
        last = self.seen[-1] if self.seen else 0
        await ws.send(json.dumps({"type": "hello", "last_seq": last, "epoch": self.epoch}))
        welcome = json.loads(await ws.recv())
        if not welcome["resumed"]:
            self.problems.append(f"not resumed after {last}: {welcome}")
        self.epoch = welcome["epoch"]
        cut_after = self.rng.randint(1, 40)
        for _ in range(cut_after):
            if len(self.seen) == EVENTS:
                return
            frame = json.loads(await ws.recv())
            if frame["type"] != "event":
                continue
            expected = self.seen[-1] + 1 if self.seen else 1
            if frame["seq"] != expected:
                self.problems.append(f"seq {frame['seq']} where {expected} was due")
            self.seen.append(frame["seq"])
            if self.slow and self.rng.random() < 0.05:
                await asyncio.sleep(0.5)  # past the replay page's deadline
        ws.transport.abort()  # a cut: whatever the server writes now is lost
