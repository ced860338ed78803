"""The HTTP API read by a page of another origin in a real headless Chromium (CORS):
a ``fetch`` with a token (a preflight first), and the JavaScript client's check after
a resume refused with 4409, which now learns whether events were missed; and the
client's modules, which such a page loads from the server, cross-origin."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import eventually
from tests.proxies import HttpProxy
from tests.support import client_modules, run_server

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "cors-test-secret-" + "x" * 32
# What /client/bamboo.js exports: the client's API, as it was before the entry re-exported
# it from sibling modules.
CLIENT_EXPORTS = [
    "BambooClient",
    "ClientError",
    "ConnectionLost",
    "EpochChanged",
    "Forbidden",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_EVENTS",
    "NotFound",
    "RESUME_CODES",
    "Refused",
    "RequestError",
    "RequestTimeout",
    "STREAM_PATH",
    "SUBPROTOCOL",
    "SequenceError",
    "SessionEnded",
    "Unauthorized",
    "eventsUrl",
    "newKey",
    "streamUrl",
]


def make_token(sub: str, role: str = "user") -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET, "HS256")


async def foreign_page(browser: Any, app_origin: str, port: int) -> Any:
    """A blank page of another origin (``localhost`` and another port, the server being
    at 127.0.0.1), with the client imported as ``window.bamboo``."""
    page = await browser.new_page()
    await page.goto(app_origin.replace("127.0.0.1", "localhost") + "/")
    await page.evaluate(
        "async (url) => { window.bamboo = await import(url); }",
        f"http://127.0.0.1:{port}/client/bamboo.js",
    )
    return page


async def test_a_page_of_another_origin_loads_every_module_of_the_client(
    browser: Any, app_origin: str
) -> None:
    """bamboo.js imports its sibling modules by relative URL, so a page of another
    origin that imports it loads each of them from the server, cross-origin (a module
    is always fetched with CORS: one served without ``Access-Control-Allow-Origin``
    fails the import). Every module the entry reaches comes from the server, the entry
    exports the client's whole API, and the client works."""
    async with run_server(shutdown_grace=0.5) as server:
        base = f"http://127.0.0.1:{server.port}"
        page = await foreign_page(browser, app_origin, server.port)
        assert page.url.startswith("http://localhost:") and not page.url.startswith(base)
        loaded = await page.evaluate(
            "() => performance.getEntriesByType('resource').map((entry) => entry.name)"
        )
        modules = {f"{base}/client/{name}" for name in client_modules()}
        assert {name for name in loaded if "/client/" in name} == modules
        assert await page.evaluate("Object.keys(window.bamboo).sort()") == CLIENT_EXPORTS
        outcome = await page.evaluate(
            """async (url) => {
              const { BambooClient } = window.bamboo;
              const c = await BambooClient.connect(url, { sessionId: "modules", create: true });
              const seq = await c.publish({ type: "token", content: "hi" });
              const { events } = await c.readEvents();
              await c.close();
              return { seq, read: events.map((item) => item.seq), state: c.state };
            }""",
            base,
        )
        assert outcome == {"seq": 1, "read": [1], "state": "closed"}


async def test_a_page_of_another_origin_reads_the_api_with_its_token(
    browser: Any, app_origin: str
) -> None:
    async with run_server(auth_secret=SECRET, shutdown_grace=0.5) as server:
        url = f"ws://127.0.0.1:{server.port}"
        alice = make_token("alice")
        async with await BambooClient.connect(url, "read-me", create=True, token=alice) as c:
            await c.publish(AgentEvent.token("hello"))
        page = await foreign_page(browser, app_origin, server.port)
        read = """async ({ url, token }) => {
          const headers = { Accept: "application/json" };
          if (token) headers.Authorization = `Bearer ${token}`;
          try {
            const response = await fetch(url, { headers });
            return { status: response.status, body: await response.json() };
          } catch (error) {
            return { failed: String(error) };
          }
        }"""
        events = f"http://127.0.0.1:{server.port}/api/v1/sessions/read-me/events"
        page_of_one = await page.evaluate(
            read, {"url": f"{events}?after_seq=0&limit=1", "token": alice}
        )
        assert page_of_one.get("status") == 200, page_of_one
        assert page_of_one["body"]["last_seq"] == 1
        assert [e["seq"] for e in page_of_one["body"]["events"]] == [1]
        # An error is read too, its JSON body and all.
        refused = await page.evaluate(
            read, {"url": f"{events}?after_seq=0&limit=1", "token": make_token("bob")}
        )
        assert refused.get("status") == 403, refused
        assert refused["body"]["error"]["code"] == "forbidden"
        unauthorized = await page.evaluate(read, {"url": events, "token": None})
        assert unauthorized["status"] == 401
        assert unauthorized["body"]["error"]["code"] == "unauthorized"


async def test_the_client_of_a_page_of_another_origin_knows_what_it_missed(
    browser: Any, app_origin: str
) -> None:
    """The page's client is away (its connection cut and kept down) while the agent
    publishes and closes the session; its resume is refused (4409) and its check over
    HTTP, from its other origin, now has an answer: ConnectionLost naming seq 3, not the
    cautious "may not have been delivered" of a failed request."""
    async with run_server(auth_secret=SECRET, shutdown_grace=0.5) as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            url = f"ws://127.0.0.1:{server.port}"
            agent = await BambooClient.connect(
                url, "away", create=True, role="agent", token=make_token("alice", "agent")
            )
            async with agent:
                for i in range(3):
                    await agent.publish(AgentEvent.token(f"a{i}"))
                page = await foreign_page(browser, app_origin, server.port)
                await page.evaluate(
                    """async ({ url, token }) => {
                      const c = await window.bamboo.BambooClient.connect(url, {
                        sessionId: "away", lastSeq: 0, token, backoffInitial: 50, backoffMax: 200,
                      });
                      window.seen = [];
                      window.outcome = (async () => {
                        try {
                          for await (const item of c.events()) window.seen.push(item.seq);
                          return { ended: "without an error" };
                        } catch (error) {
                          return {
                            name: error.name, message: error.message,
                            afterSeq: error.afterSeq, cause: error.cause?.code,
                          };
                        }
                      })();
                    }""",
                    {"url": f"http://127.0.0.1:{port}", "token": make_token("alice")},
                )

                async def seen_all() -> bool:
                    return bool(await page.evaluate("window.seen.length") == 3)

                await eventually(seen_all, "the first three events in the page")
                proxy.cut()
                for i in range(3, 6):
                    await agent.publish(AgentEvent.token(f"a{i}"))
                await agent.set_state("closed")
            proxy.mend()
            outcome = await page.evaluate("window.outcome")
        finally:
            await proxy.close()
        assert outcome["name"] == "ConnectionLost", outcome
        assert outcome["afterSeq"] == 3 and outcome["cause"] == 4409
        assert "may not have been delivered" not in outcome["message"], outcome
        assert "after seq 3 not delivered" in outcome["message"], outcome
        assert outcome["message"].endswith("after_seq=3)"), outcome
