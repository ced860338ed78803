"""The JavaScript client (/client/bamboo.js) and the web console in a real headless
Chromium when the session is replaced while they are away: it is closed, deleted and
created again under its id (another log, another epoch, its seqs from 1 again) and
closed, so the resume is refused with 4409. The client asks
``GET /api/v1/sessions/{id}/events`` whether events follow the last it delivered; the
answer names the epoch of the log it was read from, another than the client's, so the
client yields a reset to the new log and ends with SessionEnded, never taking the new
log's events for the rest of its own; the console says the session was replaced.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer
from tests.console_support import ws_url
from tests.proxies import HttpProxy
from tests.support import get, run_server
from tests.test_browser_console_missed import (
    closed_while_the_page_is_away,
    expect_shown_as_replaced,
)

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION = "swapped"

# A client of the page's origin (the proxy's), reading every item of events() into
# window.items, and how events() ended into window.done.
WATCH = """async (url) => {
  const { BambooClient } = await import("/client/bamboo.js");
  const client = await BambooClient.connect(url, {
    sessionId: "swapped", backoffInitial: 50, backoffMax: 200,
  });
  window.client = client;
  window.items = [];
  window.done = null;
  void (async () => {
    try {
      for await (const item of client.events()) window.items.push(item);
      window.done = { error: null };
    } catch (error) {
      window.done = { error: String(error) };
    }
  })();
  const page = await client.readEvents({ afterSeq: 0, limit: 1 });
  if (page.epoch !== client.epoch) throw new Error(`a page of epoch ${page.epoch}`);
  return client.epoch;
}"""

ENDED = """() => ({
  done: window.done,
  items: window.items.map((item) => (item.reset ? item : item.seq)),
  error: window.client.error && {
    name: window.client.error.name,
    code: window.client.error.code,
  },
})"""


async def replace(server: BambooServer, new_events: int, message: bool = False) -> str:
    """Deletes the session and creates another under its id with ``new_events`` tokens
    (and a message), then closes it; its epoch."""
    await server.manager.delete_session(SESSION)
    async with await BambooClient.connect(
        ws_url(server), SESSION, create=True, role="agent"
    ) as agent:
        for i in range(new_events):
            await agent.publish(AgentEvent.token(f"new{i} "))
        if message:
            await agent.send_message(Message.assistant("Written in the session that replaced it."))
        await agent.set_state("closed")
        assert agent.epoch is not None
        return agent.epoch


@pytest.mark.parametrize("new_events", [2, 8])
async def test_the_client_does_not_splice_a_replaced_sessions_log(
    browser: Any, new_events: int
) -> None:
    """The page's client has events 1..5 when it is cut off; the session is replaced
    by one of ``new_events`` events. Before, with 8 (events after 5 in the new log),
    events() ended with ConnectionLost telling to read GET …/events?after_seq=5, the
    new log's 6..8; with 2, it ended as if the session it followed had closed at 5.
    Now both yield a reset to the new log, then end, the client with SessionEnded."""
    async with run_server() as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            async with await BambooClient.connect(
                ws_url(server), SESSION, create=True, role="agent"
            ) as agent:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{port}/healthz")
                old_epoch = await page.evaluate(WATCH, f"http://127.0.0.1:{port}")
                for i in range(5):
                    await agent.publish(AgentEvent.token(f"old{i} "))
                await page.wait_for_function("() => window.items.length === 5", timeout=5000)
                proxy.cut()
                await page.wait_for_function(
                    "() => window.client.state === 'reconnecting'", timeout=5000
                )
                await agent.set_state("closed")
            new_epoch = await replace(server, new_events)
            status, stored = await get(server, f"/api/v1/sessions/{SESSION}/events")
            assert status == 200 and stored["epoch"] == new_epoch, stored
            assert stored["last_seq"] >= new_events, stored
            proxy.mend()
            await page.wait_for_function("() => window.done !== null", timeout=15000)
            ended = await page.evaluate(ENDED)
        finally:
            await proxy.close()
    reset = {
        "reset": True,
        "epoch": new_epoch,
        "lastSeq": stored["last_seq"],
        "previousEpoch": old_epoch,
        "previousLastSeq": 5,
    }
    assert ended["items"] == [1, 2, 3, 4, 5, reset], ended
    assert ended["done"] == {"error": None}, ended
    assert ended["error"] == {"name": "SessionEnded", "code": 4409}, ended


async def test_the_console_says_a_session_replaced_by_a_shorter_one_was_replaced(
    browser: Any,
) -> None:
    """The console page is away while the session ends and is replaced by one with
    fewer events than the page had (no event after its seq 5). Before, its client
    ended events() as if the session had simply closed, and the page said "Session
    closed", nothing of the replacement nor of the events it missed. Now it shows the
    earlier session's events and says it was replaced, as when the new log is longer."""
    epochs: list[str] = []

    async def meanwhile(server: BambooServer) -> None:
        epochs.append(await replace(server, 1, message=True))

    async with closed_while_the_page_is_away(browser, SESSION, False, meanwhile=meanwhile) as (
        page,
        problems,
        stored,
    ):
        assert stored["last_seq"] < 5 and stored["epoch"] == epochs[0], stored
        await expect_shown_as_replaced(page, epochs[0])
    assert problems == []
