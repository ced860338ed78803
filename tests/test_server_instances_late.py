"""Two servers on one Redis store, one of them not yet told what the other did (its
pub/sub messages late, or lost with its connection): a resume there of events it has
not heard of is a resume, a close there delivers them first, an attach there after the
session was replaced joins the new log, and a late ``deleted`` of the old log leaves
the new log's clients."""

from __future__ import annotations

from typing import Any

from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer
from tests.server_instances_support import pair_fixture  # noqa: F401 (a fixture)
from tests.support import attach, token


class LatePubSub:
    """Holds what an instance's pub/sub listener hands its feed for one session, as a
    late pub/sub message (a busy instance, a listener connecting again) would, until
    :meth:`release`: the store has the events, this instance has not heard of them."""

    def __init__(self, server: BambooServer, session_id: str, monkeypatch: Any) -> None:
        self.feed = server.storage.live.feed  # type: ignore[union-attr]
        self.session_id = session_id
        self.held: list[Any] = []
        self.holding = True
        publish = self.feed.publish

        def late_publish(session_id: str, events: list[Any], epoch: str | None = None) -> None:
            if self.holding and session_id == self.session_id:
                self.held.append((events, epoch))
            else:
                publish(session_id, events, epoch)

        self._publish = publish
        monkeypatch.setattr(self.feed, "publish", late_publish)

    async def holding_seq(self, seq: int) -> None:
        """Returns once the pub/sub message of ``seq`` reached this instance and is held.
        Redis sends it to this instance's listener as it answers the appending instance,
        on another connection: nothing orders the two, and the ack read at once came
        before it in one run of twenty beside other load."""
        await eventually(
            lambda: any(event.seq == seq for events, _ in self.held for event in events),
            timeout=30.0,
        )

    def release(self) -> None:
        self.holding = False
        for events, epoch in self.held:
            self._publish(self.session_id, events, epoch)


async def test_a_resume_on_an_instance_not_yet_told_of_the_events_resumes(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """A client saw seq 2 on A and resumes on B before B's pub/sub brought it there:
    the store has it, so it is a resume (not "beyond the log's end"), and the client
    is not sent seq 2 again; B's other viewers get it once."""
    a, b = pair
    async with (
        attach(a, "lag", create=True, role="agent") as (agent, welcome),
        attach(b, "lag") as (viewer, _),  # B follows the session
    ):
        ack = await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
        assert (await viewer.recv_type("event"))["seq"] == ack["seq"] == 1
        late = LatePubSub(b, "lag", monkeypatch)
        ack = await agent.request({"type": "event", "id": 2, "event": token("2")}, "ack")
        assert ack["seq"] == 2
        await late.holding_seq(2)
        async with attach(b, "lag", last_seq=2, epoch=welcome["epoch"]) as (resumer, again):
            assert (again["resumed"], again["replay"], again["last_seq"]) == (True, 0, 2)
            assert (await viewer.recv_type("event"))["seq"] == 2
            late.release()
            ack = await agent.request({"type": "event", "id": 3, "event": token("3")}, "ack")
            assert (await resumer.recv_type("event"))["seq"] == 3
            assert (await viewer.recv_type("event"))["seq"] == 3


async def test_a_close_on_an_instance_not_yet_told_of_the_events_delivers_them_first(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """Seq 1 is acknowledged on A; the session is closed on B before B's pub/sub
    brought it there: B's viewers get seq 1 before ``closed``, as A's do."""
    a, b = pair
    async with (
        attach(a, "lc", create=True, role="agent") as (agent, _),
        attach(b, "lc") as (closer, _),
        attach(b, "lc") as (viewer, _),
    ):
        late = LatePubSub(b, "lc", monkeypatch)
        ack = await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
        assert ack["seq"] == 1
        await late.holding_seq(1)
        await closer.send({"type": "state", "id": 2, "state": "closed"})
        code, frames = await viewer.closed()
        assert code == 1000
        kinds = [(f["type"], f.get("seq")) for f in frames if f["type"] != "presence"]
        assert kinds == [("event", 1), ("closed", None)]


async def test_an_attach_on_an_instance_not_told_of_a_replacement_joins_the_new_log(
    pair: tuple[BambooServer, BambooServer], redis_server: RedisServer, monkeypatch: Any
) -> None:
    """The session is deleted and created again on A (a new epoch, three events) while
    B's pub/sub connection is down (its notices lost): a new client attaching on B,
    where the old log's viewer still is, gets the new log (its epoch, its three
    events), not a welcome into the old room (its epoch, seq 0) and then 4404, which
    tells a client the session is gone. The old log's viewer gets what the notice
    would have told it; once B's listener is back, the new log goes on."""
    a, b = pair
    async with attach(b, "rp", create=True) as (old_viewer, old):
        listener = b.storage.live.listener  # type: ignore[union-attr]
        deliver = listener._deliver
        monkeypatch.setattr(listener, "_deliver", lambda *args: None)  # lost
        await a.manager.delete_session("rp")
        async with attach(a, "rp", create=True, role="agent") as (agent, new):
            assert new["epoch"] != old["epoch"]
            for i in range(3):
                await agent.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
            async with attach(b, "rp", last_seq=0) as (client, welcome):
                assert (welcome["epoch"], welcome["last_seq"]) == (new["epoch"], 3)
                seqs = [(await client.recv_type("event"))["seq"] for _ in range(3)]
                assert seqs == [1, 2, 3]
                code, frames = await old_viewer.closed()
                assert code == 4404
                assert frames[-1] == {"type": "closed", "reason": "session deleted"}
                # B's listener connects again and catches up: the new log goes on.
                monkeypatch.setattr(listener, "_deliver", deliver)
                reconnects = listener.reconnects
                await b.storage.redis.call("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[union-attr]
                await eventually(lambda: listener.reconnects > reconnects and listener.connected)
                await agent.request({"type": "event", "id": 9, "event": token("9")}, "ack")
                assert (await client.recv_type("event"))["seq"] == 4


async def test_a_late_deleted_notice_of_the_old_log_leaves_the_new_logs_clients(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """The session is deleted and created again on A while B's listener holds its
    messages back (late, not lost); a client attaches on B to the new log; then B hears
    the old log's ``deleted``. It ends the old log's subscriptions only: the new
    client stays and gets the new log's next event, not 4404 from a live session."""
    a, b = pair
    async with attach(b, "ld", create=True) as (old_viewer, old):
        listener = b.storage.live.listener  # type: ignore[union-attr]
        deliver = listener._deliver
        held: list[tuple[str, bytes]] = []
        monkeypatch.setattr(listener, "_deliver", lambda *args: held.append(args))  # late
        await a.manager.delete_session("ld")
        async with attach(a, "ld", create=True, role="agent") as (agent, new):
            assert new["epoch"] != old["epoch"]
            await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
            async with attach(b, "ld", last_seq=0) as (client, welcome):
                assert (welcome["epoch"], welcome["last_seq"]) == (new["epoch"], 1)
                assert (await client.recv_type("event"))["seq"] == 1
                code, _frames = await old_viewer.closed()
                assert code == 4404
                monkeypatch.setattr(listener, "_deliver", deliver)
                assert any(data.startswith(b"deleted") for _, data in held)
                for session_id, data in held:  # the late messages, in order
                    deliver(session_id, data)
                await agent.request({"type": "event", "id": 2, "event": token("2")}, "ack")
                assert (await client.recv_type("event"))["seq"] == 2
