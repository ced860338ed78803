"""The JavaScript client (/client/bamboo.js) in a real headless Chromium: exactly-once
publish across a server killed or stopped mid-burst, resume from a saved position,
typed refusals, requests and live events between two page clients, and a message from
Python.

Each test opens a blank page of another origin (a static server on another loopback
port) and imports the module from the server, as an application's page would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer
from tests.browser import eventually
from tests.browser_client_support import client_page, serving
from tests.server_process import ServerProcess, assert_no_tracebacks

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "client-test-secret-" + "x" * 32
BURST = 200


def http_url(server: BambooServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def make_token(sub: str, role: str = "user") -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET, "HS256")


@pytest.mark.parametrize(("stop", "close_code"), [("kill", 1006), ("sigterm", 1012)])
async def test_keyed_burst_is_stored_exactly_once_across_a_server_restart(
    browser: Any, app_origin: str, tmp_path: Path, stop: str, close_code: int
) -> None:
    """200 keyed publishes, up to 20 in flight, while the server is killed (SIGKILL) or
    stopped (SIGTERM: `closed`, then 1012, and the server gone without waiting for the
    browser's close reply) and started again mid-burst: the log holds each exactly
    once, in order, and the page saw the close the server sent."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start_in_loop()
    server.extra = ("--port", str(server.port))
    try:
        page = await client_page(browser, server.port, app_origin)
        await page.evaluate(
            """async ({ url, count }) => {
              const { BambooClient } = window.bamboo;
              window.closes = [];
              class Watched extends WebSocket {
                constructor(...args) {
                  super(...args);
                  let closed = null;
                  this.addEventListener("message", (m) => {
                    if (typeof m.data === "string" && m.data.includes('"closed"')) {
                      closed = JSON.parse(m.data).reason;
                    }
                  });
                  this.addEventListener("close", (e) => window.closes.push([e.code, closed]));
                }
              }
              const c = await BambooClient.connect(url, {
                sessionId: "burst", create: true, backoffInitial: 50, backoffMax: 400,
                WebSocket: Watched,
              });
              window.progress = { acked: 0, seqs: [] };
              window.burst = (async () => {
                const inFlight = new Set();
                for (let i = 0; i < count; i++) {
                  const event = { type: "custom", name: "burst", data: { i } };
                  const sent = c.publish(event, { key: `burst-${i}` }).then((seq) => {
                    window.progress.seqs[i] = seq;
                    window.progress.acked += 1;
                  });
                  inFlight.add(sent);
                  sent.finally(() => inFlight.delete(sent));
                  if (inFlight.size >= 20) await Promise.race(inFlight);
                  await new Promise((resolve) => setTimeout(resolve, 3));
                }
                await Promise.all(inFlight);
                const { resent, reconnects, lastSeq } = c;
                await c.close();
                return { seqs: window.progress.seqs, resent, reconnects, lastSeq };
              })();
            }""",
            {"url": f"http://127.0.0.1:{server.port}", "count": BURST},
        )

        async def acked() -> int:
            return int(await page.evaluate("window.progress.acked"))

        await eventually(lambda: _at_least(acked, 50), "50 acks before the stop")
        if stop == "kill":
            server.kill()
        else:
            assert await asyncio.to_thread(server.stop) == 0
        acked_at_stop = await acked()
        await server.start_in_loop()
        result = await asyncio.wait_for(page.evaluate("window.burst"), 60)
        print(f"acked at the stop: {acked_at_stop}, resent: {result['resent']}")

        assert acked_at_stop < BURST, "the stop came after the burst"
        assert result["reconnects"] >= 1
        closes = await page.evaluate("window.closes")
        restarting = "server restarting" if stop == "sigterm" else None
        assert closes[0] == [close_code, restarting], closes
        assert result["seqs"] == list(range(1, BURST + 1))
        assert result["lastSeq"] == BURST
        async with await BambooClient.connect(f"ws://127.0.0.1:{server.port}", "burst") as reader:
            log = await reader.read_all_events()
        assert [e.seq for e in log] == list(range(1, BURST + 1))
        assert [e.event.data["i"] for e in log] == list(range(BURST))  # type: ignore[union-attr]
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


async def _at_least(read: Any, count: int) -> bool:
    return bool(await read() >= count)


async def test_resume_from_a_saved_position_and_a_reset_on_another_epoch(
    browser: Any, app_origin: str
) -> None:
    async with serving() as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "saved", create=True, role="agent") as agent:
            for i in range(3):
                await agent.publish(AgentEvent.token(f"t{i}"))
            page = await client_page(browser, server.port, app_origin)
            # Watch from seq 1, keep the position in sessionStorage, close.
            first = await page.evaluate(
                """async (url) => {
                  const c = await window.bamboo.BambooClient.connect(url, {
                    sessionId: "saved", lastSeq: 1, epoch: undefined,
                  });
                  const seen = [];
                  for await (const item of c.events()) {
                    seen.push(item.seq);
                    if (item.seq === 3) break;
                  }
                  sessionStorage.setItem("pos", JSON.stringify(
                    { sessionId: c.sessionId, lastSeq: c.lastSeq, epoch: c.epoch }));
                  await c.close();
                  return seen;
                }""",
                http_url(server),
            )
            assert first == [2, 3]
            for i in range(3, 6):
                await agent.publish(AgentEvent.token(f"t{i}"))
            # Come back from the saved position: exactly the missed events, in order.
            missed = await page.evaluate(
                """async (url) => {
                  const pos = JSON.parse(sessionStorage.getItem("pos"));
                  const c = await window.bamboo.BambooClient.connect(url, pos);
                  const seen = [];
                  for await (const item of c.events()) {
                    seen.push([item.seq, item.event.content]);
                    if (item.seq === 6) break;
                  }
                  await c.close();
                  return seen;
                }""",
                http_url(server),
            )
            assert missed == [[4, "t3"], [5, "t4"], [6, "t5"]]
            # Another epoch cannot be resumed: the client says so first.
            reset = await page.evaluate(
                """async (url) => {
                  const c = await window.bamboo.BambooClient.connect(url, {
                    sessionId: "saved", lastSeq: 2, epoch: "not-this-log",
                  });
                  const iterator = c.events();
                  const { value } = await iterator.next();
                  await c.close();
                  return value;
                }""",
                http_url(server),
            )
            assert reset["reset"] is True
            assert reset["lastSeq"] == 6 and reset["previousLastSeq"] == 2


async def test_refusals_end_the_client_with_typed_errors(browser: Any, app_origin: str) -> None:
    async with serving(auth_secret=SECRET) as server:
        alice, bob = make_token("alice"), make_token("bob")
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "mine", create=True, token=alice):
            pass
        async with await BambooClient.connect(url, "shut", create=True, token=alice) as c:
            await c.set_state("closed")
        page = await client_page(browser, server.port, app_origin)
        outcomes = await page.evaluate(
            """async ({ url, alice, bob }) => {
              const { BambooClient } = window.bamboo;
              const attempts = {
                noToken: { sessionId: "mine" },
                badToken: { sessionId: "mine", token: "nope" },
                notYours: { sessionId: "mine", token: bob },
                missing: { sessionId: "nothing-here", token: alice },
                closed: { sessionId: "shut", token: alice },
              };
              const out = {};
              for (const [name, options] of Object.entries(attempts)) {
                try {
                  await BambooClient.connect(url, options);
                  out[name] = "connected";
                } catch (error) {
                  out[name] = [error.name, error.code, error instanceof window.bamboo.ClientError];
                }
              }
              return out;
            }""",
            {"url": http_url(server), "alice": alice, "bob": bob},
        )
        assert outcomes == {
            "noToken": ["Unauthorized", 4401, True],
            "badToken": ["Unauthorized", 4401, True],
            "notYours": ["Forbidden", 4403, True],
            "missing": ["NotFound", 4404, True],
            "closed": ["SessionEnded", 4409, True],
        }


async def test_requests_and_live_events_between_two_page_clients(
    browser: Any, app_origin: str
) -> None:
    async with serving() as server:
        page = await client_page(browser, server.port, app_origin)
        result = await page.evaluate(
            """async (url) => {
              const { BambooClient, RequestError } = window.bamboo;
              const agent = await BambooClient.connect(url, {
                create: true, role: "agent", userId: "u1", title: "Two clients",
              });
              const viewer = await BambooClient.connect(url, { sessionId: agent.sessionId });
              const presence = new Promise((resolve) => viewer.on("presence", resolve));
              const third = await BambooClient.connect(url, {
                sessionId: agent.sessionId, role: "agent",
              });
              const joined = await presence;
              await third.close();
              const hello = { role: "user", content: "Hello" };
              const seq1 = await agent.sendMessage(hello, { key: "m1" });
              const again = await agent.sendMessage(hello, { key: "m1" });
              const seq2 = await agent.publish({ type: "token", content: "Hi" });
              const seen = [];
              for await (const item of viewer.events()) {
                seen.push([item.seq, item.event.type]);
                if (item.seq === seq2) break;
              }
              const history = await viewer.history({ limit: 50 });
              const page = await viewer.readEvents({ afterSeq: 0, limit: 1 });
              const all = await viewer.readAllEvents({ page: 1 });
              const rtt = await viewer.ping();
              let refused = null;
              try {
                await viewer.history({ limit: 0 });
              } catch (e) {
                refused = [e instanceof RequestError, e.code];
              }
              const closedAt = await viewer.setState("closed");
              const ends = [];
              for await (const item of agent.events()) ends.push(item);
              return {
                id: agent.sessionId, title: viewer.session.title,
                joined: [joined.role, joined.connections],
                seq1, again, seq2, seen, messages: history.messages.map((m) => m.content),
                hasMore: history.hasMore, page: [page.events.length, page.lastSeq],
                all: all.map((e) => e.seq), rtt: rtt >= 0, refused, closedAt, ends,
                agentError: [agent.error.name, agent.error.code, agent.closedReason !== null],
              };
            }""",
            http_url(server),
        )
        assert result["title"] == "Two clients"
        assert result["joined"] == ["agent", 3]
        assert (result["seq1"], result["again"], result["seq2"]) == (1, 1, 2)
        assert result["seen"] == [[1, "message"], [2, "token"]]
        assert result["messages"] == ["Hello"] and result["hasMore"] is False
        assert result["page"] == [1, 2] and result["all"] == [1, 2]
        assert result["rtt"] and result["refused"] == [True, "bad_request"]
        assert result["closedAt"] == 2
        assert result["ends"] == []
        assert result["agentError"] == ["SessionEnded", 1000, True]


async def test_a_message_from_python_reaches_a_page_client(browser: Any, app_origin: str) -> None:
    async with serving() as server:
        page = await client_page(browser, server.port, app_origin)
        await page.evaluate(
            """async (url) => {
              const { BambooClient } = window.bamboo;
              window.c = await BambooClient.connect(url, { sessionId: "py", create: true });
              window.got = (async () => {
                for await (const item of window.c.events()) return item;
              })();
            }""",
            http_url(server),
        )
        async with await BambooClient.connect(f"ws://127.0.0.1:{server.port}", "py") as py:
            await py.send_message(Message.assistant("from Python"))
        item = await page.evaluate("window.got")
        assert item["seq"] == 1
        assert item["event"]["message"]["content"] == "from Python"
        assert item["event"]["message"]["id"]  # filled in by the server
        await page.evaluate("window.c.close()")
