"""The web console and the JavaScript client in a real headless Chromium, told by the
server to ask again later: a 429 with ``Retry-After`` (the browser's address is in
debt with its read allowance: docs/protocol.md, "Read allowance"). The console says
so at the top of the page and asks again when told, instead of ending on an error: the
session list, and a user paging back through a long history. The client's check of a
session that ended while it was away waits as told too, instead of reporting events
as maybe missing. A real debt: a small allowance, and a big page read beside.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import console_url, ws_url
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.test_http_read_limits import a_log
from tests.test_rate_limited_clients import LIMITS, into_debt

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

# What a 429 makes Chromium report on the page's console: the server's answer, not a
# problem of the page's.
TOLD_TO_WAIT = "status of 429"


def page_problems(problems: list[str]) -> list[str]:
    return [p for p in problems if TOLD_TO_WAIT not in p]


async def test_the_session_list_waits_out_a_429(browser: Any) -> None:
    """The list is read while the browser's address is in debt: 429, Retry-After 3.
    It said "Could not list sessions (429: …)" and stayed so; now the top of the page
    says the server asked to wait, and the list comes once it has."""
    async with run_server(**LIMITS) as server:
        await a_log(server, "big", 96)
        page = await browser.new_page()
        problems = watch_page(page)
        # The page's first list request is held until the address is in debt: a page
        # that loaded slower than the debt lasts (a loaded machine) asked after it.
        in_debt = asyncio.Event()

        async def after_the_debt(route: Any) -> None:
            await in_debt.wait()
            await route.continue_()

        await page.route(re.compile(r"/api/v1/sessions(\?|$)"), after_the_debt)
        await page.goto(console_url(server.port))
        await into_debt(server)
        in_debt.set()
        waiting = page.locator("#waiting")
        await expect(waiting).to_be_visible()
        await expect(waiting).to_contain_text("429")
        await expect(waiting).to_contain_text("asking again in")
        await expect(page.locator("#sessions tbody tr")).to_have_count(1)
        await expect(waiting).to_be_hidden()
        await expect(page.locator("#results .notice")).to_have_count(0)
    assert page_problems(problems) == []


async def test_paging_back_through_a_closed_sessions_history_waits_out_a_429(
    browser: Any,
) -> None:
    """A closed session of 150 messages: its page shows the newest 50 from storage. The
    browser's address goes into debt (a big page read beside); "Load older" is then
    refused with 429. It said "Could not load messages: …" and showed no more; now it
    waits as told and shows the next 50."""
    async with run_server(**LIMITS) as server:
        await a_log(server, "big", 96)
        await server.manager.create_session(None, session_id="long")
        messages = [
            ({"type": "message", "message": {"role": "user", "content": f"m{i} " * 100}}, None)
            for i in range(150)
        ]
        await server.manager.append_events("long", messages)
        async with await BambooClient.connect(ws_url(server), "long") as closer:
            await closer.set_state("closed")
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/long"))
        rows = page.locator("#messages li")
        await expect(rows).to_have_count(50)
        await expect(page.locator("#tail .ev-note").last).to_contain_text("closed")
        await into_debt(server)
        await page.click("#older")
        await expect(page.locator("#waiting")).to_contain_text("asking again in")
        await expect(rows).to_have_count(100)
        await expect(rows.first).to_have_attribute("data-index", "50")
        await expect(page.locator("#status")).to_have_text("")
        await expect(page.locator("#waiting")).to_be_hidden()
    assert page_problems(problems) == []


# A client of the page's origin (the proxy's) that reads every item of events() into
# window.items, and how events() ended into window.done.
WATCH = """async (url) => {
  const { BambooClient } = await import("/client/bamboo.js");
  const client = await BambooClient.connect(url, {
    sessionId: "away", backoffInitial: 50, backoffMax: 200,
  });
  window.client = client;
  window.items = [];
  window.done = null;
  void (async () => {
    try {
      for await (const item of client.events()) window.items.push(item.seq);
      window.done = { error: null };
    } catch (error) {
      window.done = { error: String(error), afterSeq: error.afterSeq ?? null };
    }
  })();
}"""


async def test_the_clients_check_after_a_4409_waits_out_a_429(browser: Any) -> None:
    """The page's client has events 1..5 when it is cut off; 5 more are appended and the
    session closed meanwhile, so its resume is refused with 4409, and it asks the HTTP
    API whether events follow seq 5 while the browser's address is in debt: 429,
    Retry-After 3. It ended with "events after seq 5 may not have been delivered …
    (HTTP 429 …)"; now it waits as told, asks again, and says which seq to read after."""
    async with run_server(**LIMITS) as server:
        await a_log(server, "big", 96)
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            async with await BambooClient.connect(
                ws_url(server), "away", create=True, role="agent"
            ) as agent:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{port}/healthz")
                await page.evaluate(WATCH, f"http://127.0.0.1:{port}")
                for i in range(5):
                    await agent.publish(AgentEvent.token(f"t{i} "))
                await page.wait_for_function("() => window.items.length === 5", timeout=5000)
                proxy.cut()
                await page.wait_for_function(
                    "() => window.client.state === 'reconnecting'", timeout=5000
                )
                for i in range(5):
                    await agent.publish(AgentEvent.token(f"u{i} "))
                await agent.set_state("closed")
            await into_debt(server)
            proxy.mend()
            await page.wait_for_function("() => window.done !== null", timeout=15000)
            done = await page.evaluate("() => window.done")
        finally:
            await proxy.close()
    assert done["afterSeq"] == 5, done
    assert "after seq 5 not delivered" in done["error"], done
