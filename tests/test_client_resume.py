"""BambooClient across drops: exactly-once publish and gap-free events through server
restarts and cut TCP streams; close codes that resume and those that stop; sequence
checking against a fake server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bamboo_session.protocol import AgentEvent, SessionMetadata, Token
from bamboo_session.protocol.client import (
    BambooClient,
    ConnectionLost,
    Refused,
    SequenceError,
    StoredEvent,
    _Sequence,
)
from bamboo_session.protocol.codec import JSON
from bamboo_session.protocol.frames import Welcome
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the stores the server tests run on

TIMEOUT = 10.0
BURST = 500
FAST = {"backoff_initial": 0.02, "backoff_max": 0.2}


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port; :meth:`cut` aborts every stream
    (both sides, no close frame), as a network failure would. While ``downstream`` is
    clear, what the server sends is held (and lost at the next cut)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.transports: list[asyncio.WriteTransport] = []
        self.cuts = 0
        self.downstream = asyncio.Event()
        self.downstream.set()
        self.sent = asyncio.Event()  # set as a client's bytes are forwarded

    async def __aenter__(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        self.cut()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.transports += [writer.transport, up_writer.transport]  # type: ignore[list-item]

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if gate is not None:
                        await gate.wait()
                    else:
                        self.sent.set()
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(
            pump(reader, up_writer, None), pump(up_reader, writer, self.downstream)
        )

    def cut(self) -> None:
        self.cuts += 1
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def hold_until_sent(self) -> None:
        """Hold what the server sends, and return once a client has sent more: what it
        sent meanwhile stays unanswered until the next cut, however the acks were timed."""
        self.downstream.clear()
        self.sent.clear()
        await asyncio.wait_for(self.sent.wait(), TIMEOUT)

    async def cut_with_requests_in_flight(self) -> None:
        await self.hold_until_sent()
        self.cut()
        self.downstream.set()


async def burst(
    client: BambooClient, count: int, on_acked: Callable[[int], None], window: int = 32
) -> list[int]:
    """``count`` publishes issued in order, up to ``window`` in flight at once (so that
    a drop finds some in flight and some not yet issued); ``on_acked(n)`` after each ack."""
    done = 0
    room = asyncio.Semaphore(window)

    async def one(i: int) -> int:
        nonlocal done
        try:
            seq = await client.publish(AgentEvent.token(str(i)))
        finally:
            room.release()
        done += 1
        on_acked(done)
        return seq

    async def issue() -> list[int]:
        tasks = []
        for i in range(count):
            await room.acquire()
            tasks.append(asyncio.create_task(one(i)))
        return await asyncio.gather(*tasks)

    return await asyncio.wait_for(issue(), TIMEOUT)


async def watch(client: BambooClient, count: int) -> list[StoredEvent]:
    """The next ``count`` events (a Reset would fail the test: resume must work)."""
    seen: list[StoredEvent] = []
    async for item in client.events():
        assert isinstance(item, StoredEvent), item
        seen.append(item)
        if len(seen) == count:
            break
    return seen


async def assert_log_exactly_once(client: BambooClient, count: int) -> None:
    log = await client.read_all_events()
    assert [e.seq for e in log] == list(range(1, count + 1))
    contents = [e.event.content for e in log if isinstance(e.event, Token)]
    assert contents == [str(i) for i in range(count)], "each event once, in order"


def assert_gap_free(seen: list[StoredEvent], count: int) -> None:
    assert [e.seq for e in seen] == list(range(1, count + 1))
    assert [e.event.content for e in seen] == [str(i) for i in range(count)]  # type: ignore[union-attr]


@pytest.mark.usefixtures("server_store")
async def test_burst_survives_cuts_of_the_tcp_stream() -> None:
    async with (
        run_server() as server,
        TcpProxy(server.port) as proxy,
    ):
        url = proxy.url
        async with (
            await BambooClient.connect(url, "p", create=True, role="agent", **FAST) as agent,
            await BambooClient.connect(url, "p", last_seq=0, **FAST) as viewer,
        ):
            viewing = asyncio.create_task(watch(viewer, BURST))

            cutting: list[asyncio.Task[None]] = []

            def cut_now_and_then(acked: int) -> None:
                if acked in (50, 200, 350):
                    cutting.append(asyncio.create_task(proxy.cut_with_requests_in_flight()))

            seqs = await burst(agent, BURST, cut_now_and_then)
            await asyncio.gather(*cutting)
            assert sorted(seqs) == list(range(1, BURST + 1))
            assert_gap_free(await asyncio.wait_for(viewing, TIMEOUT), BURST)
            # A cut finds the agent connected (it is mid-burst); the viewer may still
            # be waiting to reconnect from the previous one.
            assert proxy.cuts == 3 and agent.reconnects == 3 and viewer.reconnects >= 1
            assert agent.resent > 0, "some publishes were in flight at a cut"
            await assert_log_exactly_once(agent, BURST)


@pytest.mark.usefixtures("server_store")
async def test_sequential_publishes_survive_cuts_while_disconnected() -> None:
    async with (
        run_server() as server,
        TcpProxy(server.port) as proxy,
    ):
        async with await BambooClient.connect(proxy.url, "q", create=True, **FAST) as agent:
            for i in range(200):
                if i % 40 == 20:
                    proxy.cut()  # the next publishes wait for the reconnect, in order
                assert (
                    await asyncio.wait_for(agent.publish(AgentEvent.token(str(i))), TIMEOUT)
                    == i + 1
                )
            await assert_log_exactly_once(agent, 200)


@pytest.mark.durable
@pytest.mark.usefixtures("server_store")
async def test_burst_survives_a_server_restart() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(run_server(data_dir, durability="os"))
            port = server.port
            proxy = await stack.enter_async_context(TcpProxy(port))
            url = proxy.url
            agent = await stack.enter_async_context(
                await BambooClient.connect(url, "r", create=True, **FAST)
            )
            viewer = await stack.enter_async_context(
                await BambooClient.connect(url, "r", last_seq=0, **FAST)
            )
            viewing = asyncio.create_task(watch(viewer, BURST))
            restarted = asyncio.Event()

            async def restart() -> None:
                # With publishes unanswered: their acks are held, then lost with the
                # connections, cut as the server stops.
                await proxy.cut_with_requests_in_flight()
                await server.stop()
                await asyncio.sleep(0.2)  # clients find nobody listening meanwhile
                await stack.enter_async_context(run_server(data_dir, durability="os", port=port))
                restarted.set()

            restarting: list[asyncio.Task[None]] = []

            def restart_once(acked: int) -> None:
                if acked == 150:
                    restarting.append(asyncio.create_task(restart()))

            await burst(agent, BURST, restart_once)
            await asyncio.wait_for(restarted.wait(), TIMEOUT)
            assert_gap_free(await asyncio.wait_for(viewing, TIMEOUT), BURST)
            assert agent.reconnects >= 1 and viewer.reconnects >= 1
            assert agent.resent > 0, "some publishes were in flight at the restart"
            await assert_log_exactly_once(agent, BURST)


# -- a fake server, to misbehave on purpose ------------------------------------------------

Script = Callable[[ServerConnection, dict[str, Any], int], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(script: Script) -> AsyncIterator[list[dict[str, Any]]]:
    """A server that reads hello, then runs ``script(ws, hello, attempt)``; yields the
    hellos it received."""
    hellos: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        hellos.append(hello)
        await script(ws, hello, len(hellos))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        hellos.append({"port": port})
        yield hellos


async def welcome(ws: ServerConnection, last_seq: int = 0, resumed: bool = False) -> None:
    meta = SessionMetadata(id="f", epoch="E")
    await ws.send(JSON.encode(Welcome("c_1", meta, "E", last_seq, resumed, 0)).decode())


async def event(ws: ServerConnection, seq: int) -> None:
    frame = {
        "type": "event",
        "seq": seq,
        "ts": "2024-01-01T00:00:00Z",
        "event": {"type": "token", "content": str(seq)},
    }
    await ws.send(json.dumps(frame))


def url_of(hellos: list[dict[str, Any]]) -> str:
    return f"ws://127.0.0.1:{hellos.pop(0)['port']}"


@pytest.mark.parametrize(("seqs", "message"), [([1, 2, 4], "gap"), ([1, 2, 2], "duplicate")])
async def test_a_gap_or_a_duplicate_raises(seqs: list[int], message: str) -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        await welcome(ws)
        for seq in seqs:
            await event(ws, seq)
        await ws.wait_closed()

    async with fake_server(script) as hellos:
        async with await BambooClient.connect(url_of(hellos), "f") as client:
            seen = []
            with pytest.raises(SequenceError, match=message):
                async for item in client.events():
                    seen.append(item.seq)  # type: ignore[union-attr]
            assert seen == [1, 2]


async def test_an_ack_may_trail_later_events_of_others() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        await welcome(ws)
        request = json.loads(await ws.recv())
        await event(ws, 2)  # someone else's, stored right after ours
        await asyncio.sleep(0.05)
        await ws.send(json.dumps({"type": "ack", "id": request["id"], "seq": 1}))
        await event(ws, 3)
        await ws.wait_closed()

    async with fake_server(script) as hellos:
        async with await BambooClient.connect(url_of(hellos), "f") as client:
            assert await client.publish(AgentEvent.token("mine")) == 1
            assert [e.seq for e in await watch(client, 2)] == [2, 3]
            assert client.last_seq == 3


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013, 4408, 4429])
async def test_resumable_closes_reconnect_with_last_seq_and_epoch(code: int) -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
            await event(ws, 1)
            await ws.close(code)
        else:
            await welcome(ws, last_seq=1, resumed=True)
            await event(ws, 2)
            await ws.wait_closed()

    async with fake_server(script) as hellos:
        async with await BambooClient.connect(url_of(hellos), "f", create=True, **FAST) as client:
            assert [e.seq for e in await asyncio.wait_for(watch(client, 2), TIMEOUT)] == [1, 2]
    assert hellos[0]["create"] is True and "last_seq" not in hellos[0]
    assert hellos[1]["last_seq"] == 1 and hellos[1]["epoch"] == "E"
    assert "create" not in hellos[1]  # a reconnect never creates a session


@pytest.mark.parametrize("code", [1008, 4401, 4403, 4404])
async def test_final_closes_are_raised_not_retried(code: int) -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
        await ws.close(code, "no")

    async with fake_server(script) as hellos:
        client = await BambooClient.connect(url_of(hellos), "f", **FAST)
        with pytest.raises(Refused) as refused:
            async for _ in client.events():
                pass
        assert refused.value.code == code and len(hellos) == 1
        with pytest.raises(Refused):
            await client.publish(AgentEvent.token("x"))
        await client.close()
        with pytest.raises(Refused) as refused:  # the same on the first connect
            await BambooClient.connect(url_of([{"port": client_port(client)}]), "f")
        assert refused.value.code == code


def client_port(client: BambooClient) -> int:
    return int(client._base_url.rsplit(":", 1)[1])


async def test_reconnecting_gives_up_after_max_retries() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
        await ws.close(1013)  # then never a welcome again: every retry fails

    async with fake_server(script) as hellos:
        url = url_of(hellos)
        client = await BambooClient.connect(url, "f", max_retries=2, **FAST)
        with pytest.raises(ConnectionLost, match="gave up after 2"):
            await asyncio.wait_for(client.publish(AgentEvent.token("x")), TIMEOUT)
        await client.close()


async def test_without_reconnect_a_drop_ends_the_client() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        await welcome(ws)
        await ws.close(1012)

    async with fake_server(script) as hellos:
        client = await BambooClient.connect(url_of(hellos), "f", reconnect=False)
        with pytest.raises(ConnectionLost):
            async for _ in client.events():
                pass
        await client.close()


def test_sequence_tracker_allows_holes_only_for_unanswered_publishes() -> None:
    seq = _Sequence(0)
    seq.see(1, "event")
    seq.see(3, "event")
    seq.check(1)  # 2 may be our publish's seq, its ack still on the way
    with pytest.raises(SequenceError, match="gap: seq 2"):
        seq.check(0)
    assert seq.is_hole(2) and not seq.is_hole(3)
    seq.see(2, "ack")
    seq.check(0)
    assert (seq.contiguous, seq.highest, seq.above) == (3, 3, set())
    with pytest.raises(SequenceError, match="duplicate"):
        seq.see(3, "event")
