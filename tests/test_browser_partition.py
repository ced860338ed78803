"""The JavaScript client (/client/bamboo.js) in a real headless Chromium when its link
goes silent: the page reaches the server through an HttpProxy, and ``freeze()`` stops
its connection with no FIN and no RST (a phone in a tunnel), which a browser can keep
"open" for minutes. The client pings a connection on which nothing came for
``pingInterval``, and gives it up once nothing at all came for ``pingTimeout`` after:
it resumes on a new connection with every event it missed, once, in order, and its
unanswered publish resent once. A partition that heals before that costs nothing: no
reconnect, no duplicate. An agent (the Python client, straight to the server) publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer
from tests.browser import eventually, watch_page
from tests.console_support import ws_url
from tests.proxies import HttpProxy
from tests.support import get, run_server

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION = "partition"

# A client of the page's origin (the proxy's), with the liveness settings given: every
# item of events() goes to window.items (a seq, or the reset), every state change to
# window.states, and every frame the page sends to window.sent (the WebSocket's own
# send, watched), so that the test sees the pings.
WATCH = """async ([url, options]) => {
  window.sent = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    window.sent.push(JSON.parse(String(data)).type);
    return send.call(this, data);
  };
  const { BambooClient } = await import("/client/bamboo.js");
  const client = await BambooClient.connect(url, {
    sessionId: "partition", backoffInitial: 50, backoffMax: 200, ...options,
  });
  window.client = client;
  window.items = [];
  window.states = [];
  window.done = null;
  client.on("state", (change) =>
    window.states.push([change.state, change.code ?? null, change.reason ?? null]));
  void (async () => {
    try {
      for await (const item of client.events()) window.items.push(item.reset ? item : item.seq);
      window.done = { error: null };
    } catch (error) {
      window.done = { error: String(error) };
    }
  })();
}"""

SEEN = """() => ({
  items: window.items,
  states: window.states,
  reconnects: window.client.reconnects,
  resent: window.client.resent,
  state: window.client.state,
  pings: window.sent.filter((type) => type === "ping").length,
  done: window.done,
})"""


@contextlib.asynccontextmanager
async def watched(
    browser: Any, options: dict[str, Any], uplink_rate: int | None = None, **settings: Any
) -> AsyncIterator[tuple[Any, ...]]:
    """A server (with ``settings``), an agent attached straight to it, the
    proxy (carrying what the page sends at ``uplink_rate``), and a page whose client
    follows the session through the proxy with ``options``; the page's problems."""
    async with run_server(**settings) as server:
        proxy = HttpProxy(server.port, uplink_rate=uplink_rate)
        port = await proxy.start()
        try:
            async with await BambooClient.connect(
                ws_url(server), SESSION, create=True, role="agent"
            ) as agent:
                page = await browser.new_page()
                problems = watch_page(page)
                await page.goto(f"http://127.0.0.1:{port}/healthz")
                await page.evaluate(WATCH, [f"http://127.0.0.1:{port}", options])
                yield server, proxy, agent, page, problems
        finally:
            proxy.thaw()
            await proxy.close()


async def publish(agent: BambooClient, count: int) -> list[int]:
    return [await agent.publish(AgentEvent.token(f"t{i} ")) for i in range(count)]


async def seen(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(SEEN)
    return result


async def items_reach(page: Any, count: int, timeout: float = 10.0) -> None:
    await page.wait_for_function(f"() => window.items.length >= {count}", timeout=timeout * 1000)


async def stored_seqs(server: BambooServer) -> dict[int, Any]:
    status, page = await get(server, f"/api/v1/sessions/{SESSION}/events")
    assert status == 200, page
    return {stored["seq"]: stored["event"] for stored in page["events"]}


async def test_a_silent_link_is_given_up_and_resumed_with_every_event_once(
    browser: Any,
) -> None:
    """The page has events 1..3 when its link freezes; the agent publishes 4..6 and the
    page publishes one of its own, all held in the frozen link. Before, the page kept
    the dead socket and showed nothing more (its close would come minutes later, when
    TCP gave up). Now, 0.5 s of silence brings a ping, and 1 s more with no frame ends
    the link: the client resumes on a new connection, receives 4..6, has its publish
    stored once, and goes on with 8..9. When the frozen link thaws afterwards, what it
    held (events, the late pong, the publish sent again) changes nothing."""
    interval, timeout = 0.5, 1.0
    options = {"pingInterval": interval * 1000, "pingTimeout": timeout * 1000}
    async with watched(browser, options) as (server, proxy, agent, page, problems):
        assert await publish(agent, 3) == [1, 2, 3]
        await items_reach(page, 3)
        assert proxy.freeze() >= 1
        frozen_at = time.monotonic()
        assert await publish(agent, 3) == [4, 5, 6]
        await page.evaluate(
            """() => { window.own = window.client.publish({ type: "token", content: "own" }); }"""
        )
        await eventually(
            lambda: resumed_once(page), "a resume on a new connection", interval + timeout + 10
        )
        resumed_after = time.monotonic() - frozen_at
        own_seq = await page.evaluate("() => window.own")
        assert own_seq == 7
        assert await publish(agent, 2) == [8, 9]
        await items_reach(page, 8)
        proxy.thaw()  # the old link's held bytes flow on; the client heard its last
        await asyncio.sleep(interval + timeout)
        result = await seen(page)
        stored = await stored_seqs(server)
    # The link was silent from the freeze: found within interval + timeout of its last
    # frame, plus the first backoff (at most 50 ms) and room for a loaded machine.
    assert resumed_after < interval + timeout + 1.5, resumed_after
    assert result["items"] == [1, 2, 3, 4, 5, 6, 8, 9], result
    assert result["reconnects"] == 1 and result["resent"] == 1, result
    assert ["reconnecting", None, "connection silent"] in result["states"], result
    assert result["state"] == "open" and result["done"] is None, result
    assert sorted(stored) == list(range(1, 10)), stored
    assert [seq for seq, event in stored.items() if event.get("content") == "own"] == [7]
    assert problems == []


# A page publishes one event of random text (incompressible, should the link compress)
# of this many characters, and the resolved seq goes to window.own.
PUBLISH_LARGE = """(size) => {
  const bytes = new Uint8Array((size * 3) / 4);
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65536)); // 64 KiB at most a call
  }
  window.content = btoa(Array.from(bytes, (byte) => String.fromCharCode(byte)).join(""));
  window.own = null;
  window.client.publish({ type: "token", content: window.content })
    .then((seq) => { window.own = seq; }, (error) => { window.own = String(error); });
}"""


async def test_a_large_publish_over_a_slow_uplink_keeps_its_link(browser: Any) -> None:
    """360 kB published over a 30 kB/s uplink take 12 s to cross, the server silent
    meanwhile (it acks once it read the frame): the ping sent after 0.5 s of silence
    waits behind the frame, and its answer comes after the ack. Before, the client gave
    the link up 1 s after the ping, resumed and sent the frame again, and again, for
    ever; now the ping's wait grows by the frame's time at ``minUplinkRate`` (8 KiB/s),
    and the link is kept: acked once, stored once, no reconnect. The server's own
    keepalive pings as often (the page's Pongs wait behind the frame as well) and keeps
    the link for the page's bytes that keep coming."""
    interval, timeout, rate, size = 0.5, 1.0, 30_000, 360_000
    options = {"pingInterval": interval * 1000, "pingTimeout": timeout * 1000}
    keepalive = {"ping_interval": interval, "ping_timeout": timeout}
    async with watched(browser, options, uplink_rate=rate, **keepalive) as (
        server,
        _proxy,
        _agent,
        page,
        problems,
    ):
        started = time.monotonic()
        await page.evaluate(PUBLISH_LARGE, size)
        await page.wait_for_function("() => window.own !== null", timeout=60_000)
        took = time.monotonic() - started
        result = await seen(page)
        own, content = await page.evaluate("() => [window.own, window.content]")
        stored = await stored_seqs(server)
    assert took > 0.8 * size / rate, took  # the uplink was that slow
    assert own == 1, own
    assert result["pings"] >= 1, result  # the check ran while the frame crossed
    assert result["states"] == [] and result["reconnects"] == 0, result
    assert result["resent"] == 0, result
    assert list(stored) == [1] and stored[1]["content"] == content
    assert problems == []


async def resumed_once(page: Any) -> bool:
    return bool(
        await page.evaluate(
            "() => window.client.state === 'open' && window.client.reconnects === 1"
        )
    )


async def test_a_partition_healed_in_time_costs_no_reconnect_nor_duplicate(
    browser: Any,
) -> None:
    """The link freezes long enough for the client to ping it (the ping is held with
    the rest), and thaws before the ping's timeout: the pong, and the events held
    meanwhile, come on the same connection. No reconnect, every event once, in order;
    and the client stays on that connection for longer than a silent one would last."""
    interval, timeout = 0.3, 3.0
    options = {"pingInterval": interval * 1000, "pingTimeout": timeout * 1000}
    async with watched(browser, options) as (_server, proxy, agent, page, problems):
        assert await publish(agent, 2) == [1, 2]
        await items_reach(page, 2)
        proxy.freeze()
        pings_before = (await seen(page))["pings"]
        assert await publish(agent, 3) == [3, 4, 5]
        await eventually(
            lambda: pings_are_more_than(page, pings_before), "a ping on the frozen link"
        )
        proxy.thaw()
        await items_reach(page, 5)
        await asyncio.sleep(interval + timeout + 1)  # past what a silent link would get
        assert await publish(agent, 1) == [6]
        await items_reach(page, 6)
        result = await seen(page)
    assert result["items"] == [1, 2, 3, 4, 5, 6], result
    assert result["reconnects"] == 0 and result["states"] == [], result
    assert problems == []


async def pings_are_more_than(page: Any, count: int) -> bool:
    return bool((await seen(page))["pings"] > count)


async def test_an_idle_link_is_pinged_and_kept_and_the_pings_stop_at_close(
    browser: Any,
) -> None:
    """No event for many intervals: the client pings, the server answers, the link is
    kept. Once the client is closed it pings no more (its check stopped with it)."""
    interval, timeout = 0.3, 2.0
    options = {"pingInterval": interval * 1000, "pingTimeout": timeout * 1000}
    async with watched(browser, options) as (_server, _proxy, _agent, page, problems):
        await asyncio.sleep(interval * 8)
        idle = await seen(page)
        await page.evaluate("() => window.client.close()")
        closed = await seen(page)
        await asyncio.sleep(interval * 4)
        after = await seen(page)
    assert 3 <= idle["pings"] <= 9, idle
    assert idle["reconnects"] == 0 and idle["states"] == [], idle
    assert after["pings"] == closed["pings"], after
    assert after["state"] == "closed", after
    assert problems == []


async def test_ping_interval_null_sends_no_ping_and_bad_settings_are_refused(
    browser: Any,
) -> None:
    """``pingInterval: null`` turns the check off; a setting that is no positive
    number is refused before any connection."""
    async with watched(browser, {"pingInterval": None}) as (_s, _p, _a, page, problems):
        await asyncio.sleep(1.0)
        quiet = await seen(page)
        refused = await page.evaluate(
            """async (url) => {
              const { BambooClient } = await import("/client/bamboo.js");
              const refusals = [];
              for (const bad of [{ pingInterval: 0 }, { pingTimeout: -1 },
                                 { pingTimeout: null }, { pingInterval: "20" },
                                 { minUplinkRate: 0 }, { minUplinkRate: Infinity }]) {
                try {
                  await BambooClient.connect(url, { sessionId: "partition", ...bad });
                  refusals.push(null);
                } catch (error) {
                  refusals.push(error.name);
                }
              }
              return refusals;
            }""",
            page.url.removesuffix("/healthz"),
        )
    assert quiet["pings"] == 0 and quiet["state"] == "open", quiet
    assert refused == ["TypeError"] * 6, refused
    assert problems == []
