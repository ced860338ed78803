"""The web console's session page in a real headless Chromium: one session's history
(paged back to the first message, open or closed) and live tail as an agent (the Python
client) publishes, presence and actions (publish a test event, close the session), and
a server restart while watching. The session list, auth and the page's policy are in
test_browser_console_list.py, the events a page missed in
test_browser_console_missed.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient, StoredEvent
from bamboo_session.protocol.models import ToolResult
from tests.browser import eventually, watch_page
from tests.console_support import DASH, console_url, ws_url
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
# Whether a scrolled element (that overflows) shows its end.
AT_END = (
    "el => el.scrollHeight > el.clientHeight"
    " && el.scrollTop + el.clientHeight >= el.scrollHeight - 2"
)


@contextlib.asynccontextmanager
async def collecting(client: BambooClient) -> AsyncIterator[list[StoredEvent]]:
    """The events ``client`` receives, collected in the background."""
    seen: list[StoredEvent] = []

    async def collect() -> None:
        async for item in client.events():
            if isinstance(item, StoredEvent):
                seen.append(item)

    task = asyncio.create_task(collect())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_session_shows_history_then_live_tokens_tools_and_presence(browser: Any) -> None:
    async with run_server() as server:
        url = ws_url(server)
        agent = await BambooClient.connect(
            url, "weather", create=True, user_id="alice", title="Weather chat", role="agent"
        )
        async with agent:
            await agent.send_message(Message.user("What's the weather in Paris?"))
            await agent.send_message(Message.assistant("Let me check."))

            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(server.port))
            await page.click("#sessions a:text('weather')")
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            await expect(page.locator("#session-title")).to_have_text("Weather chat")
            messages = page.locator("#messages li")
            await expect(messages).to_have_count(2)
            await expect(messages.first.locator(".msg-body")).to_have_text(
                "What's the weather in Paris?"
            )
            await expect(page.locator("#older")).to_be_hidden()
            # Both stylesheets apply: the page's layout is session.css's, the controls'
            # console.css's (one not served or refused by the policy shows no grid).
            await expect(page.locator(".session-grid")).to_have_css("display", "grid")
            await expect(page.locator(".topbar")).to_have_css("display", "flex")

            # Tokens grow one block of text as they arrive.
            text = page.locator("#tail .ev-text .text")
            await agent.publish(AgentEvent.token("Sunny"))
            await expect(text).to_have_text("Sunny")
            await agent.publish(AgentEvent.token(" and"))
            await agent.publish(AgentEvent.token(" warm."))
            await expect(text).to_have_text("Sunny and warm.")

            # A tool call is one collapsible block, completed by its result.
            await agent.publish(AgentEvent.tool_start("call-1", "get_weather", {"city": "Paris"}))
            tool = page.locator('#tail details.ev-tool[data-tool="call-1"]')
            await expect(tool).to_have_attribute("data-status", "running")
            await expect(tool.locator("pre").first).to_be_hidden()  # collapsed
            await agent.publish(AgentEvent.tool_complete("call-1", ToolResult(True, "18 °C")))
            await expect(tool).to_have_attribute("data-status", "done")
            await tool.locator("summary").click()
            await expect(tool.locator("pre").first).to_contain_text('"city": "Paris"')
            await expect(tool.locator("pre").last).to_have_text("18 °C")
            await agent.publish(AgentEvent.token("Anything else?"))
            await expect(text).to_have_count(2)  # a new block after the tool call
            await expect(text.last).to_have_text("Anything else?")

            # A new message joins the history too.
            await agent.send_message(Message.assistant("It is sunny and warm."))
            await expect(messages).to_have_count(3)
            await expect(messages.last.locator(".msg-body")).to_have_text("It is sunny and warm.")
            await expect(page.locator("#meta-message_count")).to_have_text("3")

            # Presence: who is attached, with their role.
            await expect(page.locator("#presence-count")).to_have_text("2")
            async with await BambooClient.connect(url, "weather", role="agent"):
                await expect(page.locator("#presence-count")).to_have_text("3")
                await expect(page.locator('#presence-list li[data-role="agent"]')).to_have_count(1)
            await expect(page.locator("#presence-count")).to_have_text("2")
            await expect(page.locator('#presence-list li[data-role="agent"]')).to_have_count(0)
            await expect(page.locator("#stat-connections")).to_have_text("2")
        assert problems == []


async def test_last_activity_follows_live_events_and_times_age(browser: Any) -> None:
    async with run_server() as server:
        agent = await BambooClient.connect(ws_url(server), "clock", create=True, role="agent")
        async with agent:
            page = await browser.new_page()
            await page.clock.install()
            await page.goto(console_url(server.port, "#/s/clock"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            activity = page.locator("#meta-last_activity_at time")
            attached = await activity.get_attribute("datetime")
            await agent.publish(AgentEvent.token("tick"))
            await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "1")
            await expect(activity).not_to_have_attribute("datetime", attached or "")
            # Left open, the page says how long ago it is now, not when it was drawn.
            await page.clock.fast_forward(5 * 60_000)
            await expect(activity).to_have_text("5 min ago")


async def test_history_pages_back_to_the_first_message(browser: Any) -> None:
    # More messages than one whole-history answer may hold: the console reads pages.
    async with run_server(max_history_page=100) as server:
        async with await BambooClient.connect(ws_url(server), "long", create=True) as agent:
            await send_120_messages(agent)
        page = await browser.new_page()
        await page.goto(console_url(server.port, "#/s/long"))
        messages = page.locator("#messages li")
        await expect(messages).to_have_count(50)
        await expect(messages.first.locator(".msg-body")).to_have_text("message 70")
        # The list opens on its newest message, not on the 50th newest.
        listed = page.locator("#messages")
        assert await listed.evaluate(AT_END)
        await older_pages_to_the_first_of_120(page)
        # Scrolled to its end, it follows a message that arrives live.
        await listed.evaluate("el => { el.scrollTop = el.scrollHeight; }")
        async with await BambooClient.connect(ws_url(server), "long") as peer:
            await peer.send_message(Message.user("live one"))
        await expect(messages.last.locator(".msg-body")).to_have_text("live one")
        await eventually(lambda: listed.evaluate(AT_END), "the list to follow its live message")


async def send_120_messages(agent: BambooClient) -> None:
    """Messages 0 to 119, in that order: sent at once, not a round trip each."""
    await asyncio.gather(*(agent.send_message(Message.user(f"message {i}")) for i in range(120)))


async def older_pages_to_the_first_of_120(page: Any) -> None:
    """Two clicks on "Load older" from the newest 50 of 120 messages reach the first."""
    messages = page.locator("#messages li")
    await page.click("#older")
    await expect(messages).to_have_count(100)
    await page.click("#older")
    await expect(messages).to_have_count(120)
    await expect(messages.first.locator(".msg-body")).to_have_text("message 0")
    await expect(messages.first).to_have_attribute("data-index", "0")
    await expect(page.locator("#older")).to_be_hidden()


async def test_a_closed_session_pages_back_to_the_first_message(browser: Any) -> None:
    # A closed session's history comes from the HTTP API, a page at a time, each
    # message at its index: more of them than one whole-history answer may hold.
    async with run_server(max_history_page=100) as server:
        async with await BambooClient.connect(ws_url(server), "done", create=True) as agent:
            await send_120_messages(agent)
            await agent.set_state("closed")
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/done"))
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
        messages = page.locator("#messages li")
        await expect(messages).to_have_count(50)
        await expect(messages.first.locator(".msg-body")).to_have_text("message 70")
        await expect(messages.first).to_have_attribute("data-index", "70")
        await expect(messages.last.locator(".msg-body")).to_have_text("message 119")
        await older_pages_to_the_first_of_120(page)
        assert problems == []


async def test_a_closed_session_shows_its_newest_events(browser: Any) -> None:
    # What storage keeps of its log, the newest 200 events, read over HTTP: the page
    # cannot attach to a closed session for them. The tail's first line says which
    # are not shown, with "Show earlier", as a live session's tail does (before, a line
    # of its own, "Events 1-50 are not shown (GET .../events has them)", no button).
    async with run_server() as server:
        async with await BambooClient.connect(ws_url(server), "over", create=True) as agent:
            await asyncio.gather(
                *(agent.publish(AgentEvent.custom("step", {"i": i})) for i in range(1, 251))
            )
            await agent.set_state("closed")
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/over"))
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
        notes = page.locator("#tail .ev-note")
        await expect(notes).to_have_text(["This session is closed: no live events."])
        header = page.locator("#tail-earlier")
        await expect(header).to_have_text("Events 1\u201350 not shown \u00b7 Show earlier")
        steps = page.locator("#tail .ev-custom")
        await expect(steps).to_have_count(200)
        await expect(steps.first.locator(".seq")).to_have_text("#51")
        await expect(steps.last.locator(".seq")).to_have_text("#250")
        await header.get_by_role("button", name="Show earlier").click()
        await expect(header).to_have_count(0)
        await expect(steps).to_have_count(250)
        seqs = await steps.locator(".seq").all_text_contents()
        assert seqs == [f"#{i}" for i in range(1, 251)]
        assert problems == []


async def test_console_publishes_a_test_event_and_closes_the_session(browser: Any) -> None:
    async with run_server() as server:
        agent = await BambooClient.connect(ws_url(server), "acts", create=True, role="agent")
        async with agent, collecting(agent) as seen:
            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(server.port, "#/s/acts"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            await page.fill("#pub-text", "ping from the console")
            await page.click("#publish button[type=submit]")
            await expect(page.locator("#pub-result")).to_have_text("published as #1")
            await expect(page.locator("#tail .ev-custom.own")).to_have_count(1)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert [(e.seq, e.event.name, e.event.data) for e in seen] == [  # type: ignore[union-attr]
                (1, "console.test", {"text": "ping from the console"})
            ]

            await expect(page.locator("#confirm-close")).to_be_hidden()
            await page.click("#close-session")
            await page.click("#confirm-close")
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
            await expect(page.locator("#meta-state")).to_have_text("closed")
            # Why the connection ended (1000, closed on it), then that the session is.
            await expect(page.locator("#tail .ev-note")).to_have_text(
                ["Connection ended: 1000 session closed.", "Session closed: session closed"]
            )
            # Nobody is attached to a closed session: presence does not list who was.
            await expect(page.locator("#presence")).to_have_text("Nobody can attach.")
            for _ in range(100):
                if agent.finished:
                    break
                await asyncio.sleep(0.05)
            assert agent.finished and agent.closed_reason is not None
        # A closed session still shows its stored side.
        await page.reload()
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
        await expect(page.locator("#meta-state")).to_have_text("closed")
        await expect(page.locator("#actions")).to_contain_text("No actions")
        assert problems == []


async def test_a_session_deleted_while_watched_leaves_no_live_controls(browser: Any) -> None:
    async with run_server() as server:
        agent = await BambooClient.connect(ws_url(server), "gone", create=True, role="agent")
        async with agent:
            page = await browser.new_page()
            await page.goto(console_url(server.port, "#/s/gone"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            await expect(page.locator("#publish")).to_have_count(1)
            await server.manager.delete_session("gone")
            await expect(page.locator("#status")).to_contain_text("No such session")
            await expect(page.locator("#tail .ev-note")).to_have_text(
                "Connection ended: 4404 session deleted."
            )
            # Nothing offers to publish to, or close, a session that is gone.
            await expect(page.locator("#publish, #close-session")).to_have_count(0)
            await expect(page.locator("#presence")).to_have_text("This page is no longer attached.")


async def test_tail_resumes_across_a_server_restart(browser: Any, tmp_path: Path) -> None:
    """The server stops (1012) and starts again while the console watches and an agent
    keeps publishing: the tail goes on with no gap and no repeated text, and says that
    it was disconnected and resumed; presence forgets the connections of before."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start_in_loop()
    server.extra = ("--port", str(server.port))  # the restart comes back on the same port
    try:
        url = f"ws://127.0.0.1:{server.port}"
        agent = await BambooClient.connect(url, "restart", create=True, role="agent", **FAST)
        async with agent:
            # Blocks enough for the tail to scroll, to see that it still follows after.
            for i in range(30):
                await agent.publish(AgentEvent.custom("filler", i))
            before = [f"a{i} " for i in range(10)]
            for piece in before:
                await agent.publish(AgentEvent.token(piece))
            page = await browser.new_page()
            await page.goto(console_url(server.port, "#/s/restart"))
            text = page.locator("#tail .ev-text .text")
            await expect(text).to_have_text("".join(before))
            # A peer that attaches after the page: presence names it, until the restart.
            watcher = await BambooClient.connect(url, "restart", role="agent", **FAST)
            first_id = watcher.connection_id
            await expect(page.locator(f'#presence-list li[title="{first_id}"]')).to_have_count(1)

            after = [f"b{i} " for i in range(40)]

            async def publish_slowly() -> None:
                for piece in after:
                    await agent.publish(AgentEvent.token(piece))
                    await asyncio.sleep(0.01)

            publishing = asyncio.create_task(publish_slowly())
            await asyncio.sleep(0.1)
            assert await asyncio.to_thread(server.stop) == 0
            # The top bar does not pass the figures of before for the server's.
            await expect(page.locator("#stats-away")).to_be_visible()
            await expect(page.locator("#stat-rate")).to_have_text(DASH)
            await server.start_in_loop()
            await asyncio.wait_for(publishing, 30)

            # The lines about the restart part the text: joined, it is all there, once.
            async def whole() -> bool:
                shown = await text.evaluate_all("els => els.map(e => e.textContent).join('')")
                return bool(shown == "".join(before + after))

            await eventually(whole, "the text of every token, once and in order")
            state = page.locator("#conn-state")
            await expect(state).to_have_attribute("data-state", "open")
            assert int(await state.get_attribute("data-reconnects") or "0") >= 1
            assert agent.reconnects >= 1
            await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "80")
            notes = page.locator("#tail .ev-note")
            await expect(notes).to_have_count(2)
            await expect(notes.first).to_have_text(
                re.compile(
                    r"Disconnected after #\d+ \(1012 server restarting\): reconnecting"
                    + "\N{HORIZONTAL ELLIPSIS}"
                )
            )
            await expect(notes.last).to_have_text(
                re.compile(r"Reconnected after #\d+: resumed, no event missed \(#\d+ follows\)\.")
            )
            await expect(page.locator(f'#presence-list li[title="{first_id}"]')).to_have_count(0)
            await expect(page.locator("#stats-away")).to_be_hidden()
            # The lines about the restart kept the tail on its end: it shows the last event.
            await eventually(lambda: page.locator("#tail").evaluate(AT_END), "the tail's end")
            await watcher.close()
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())
