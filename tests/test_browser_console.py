"""The web console in a real headless Chromium: the session list and its filters, one
session's history and live tail as an agent (the Python client) publishes, presence
and actions, a server restart while watching, auth, and a narrow screen."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient, StoredEvent
from bamboo_session.protocol.models import ToolResult
from bamboo_session.server.app import BambooServer
from tests.browser import watch_page
from tests.proxies import HttpProxy
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import get, run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="module")
expect.set_options(timeout=10_000)

SECRET = "console-test-secret-" + "x" * 32
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
DASH = "\N{EN DASH}"  # the pager says "1 DASH 10 of 13"


def console_url(port: int, route: str = "") -> str:
    return f"http://127.0.0.1:{port}/console{route}"


def ws_url(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def make_token(sub: str, role: str = "user") -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET, "HS256")


async def make_session(
    url: str, session_id: str, user_id: str | None, title: str, **kw: Any
) -> None:
    async with await BambooClient.connect(
        url, session_id, create=True, user_id=user_id, title=title, **kw
    ):
        pass


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


async def submit_filters(page: Any, **fields: str) -> None:
    for name, value in fields.items():
        control = page.locator(f"#f-{name}")
        if await control.evaluate("el => el.tagName") == "SELECT":
            await control.select_option(value)
        else:
            await control.fill(value)
    await page.click("#filters button[type=submit]")


async def test_list_filters_sorts_and_pages(browser: Any) -> None:
    async with run_server() as server:
        url = ws_url(server)
        for i in range(8):
            await make_session(url, f"alice-{i}", "alice", f"Alice chat {i}")
        for i in range(4):
            await make_session(url, f"bob-{i}", "bob", f"Groceries {i}")
        async with await BambooClient.connect(url, "bob-3") as closer:
            await closer.set_state("closed")
        async with await BambooClient.connect(url, "weather", create=True, user_id="alice") as c:
            for text in ("one", "two", "three"):
                await c.send_message(Message.user(text))

        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(f"http://127.0.0.1:{server.port}/")  # redirects to the console
        rows = page.locator("#sessions tbody tr")
        await expect(rows).to_have_count(13)
        await expect(page.locator("#range")).to_have_text(f"1{DASH}13 of 13")
        assert page.url.startswith(console_url(server.port))

        await submit_filters(page, user_id="bob")
        await expect(rows).to_have_count(4)
        assert "user_id=bob" in page.url
        await submit_filters(page, state="closed")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-id", "bob-3")

        await page.click("#filters a:text('Reset')")
        await expect(rows).to_have_count(13)
        await submit_filters(page, title_contains="chat 7")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-id", "alice-7")

        await page.click("#filters a:text('Reset')")
        await submit_filters(page, sort_by="message_count", sort_order="desc")
        await expect(rows.first).to_have_attribute("data-id", "weather")
        await expect(rows.first.locator("td[data-label=Msgs]")).to_have_text("3")

        await submit_filters(page, limit="10")
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        await page.click("#next")
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#next")).to_be_disabled()
        await page.go_back()
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")

        await page.click("#filters a:text('Reset')")
        await submit_filters(page, created_after="2999-01-01T00:00")
        await expect(page.locator("#results .empty")).to_have_text("No sessions match.")
        await submit_filters(page, created_after="2000-01-01T00:00")
        await expect(rows).to_have_count(13)
        await expect(page.locator("#stat-connections")).to_have_text("0")
        assert problems == []


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


async def test_history_pages_back_to_the_first_message(browser: Any) -> None:
    # More messages than one whole-history answer may hold: the console reads pages.
    async with run_server(max_history_page=100) as server:
        async with await BambooClient.connect(ws_url(server), "long", create=True) as agent:
            for i in range(120):
                await agent.send_message(Message.user(f"message {i}"))
        page = await browser.new_page()
        await page.goto(console_url(server.port, "#/s/long"))
        messages = page.locator("#messages li")
        await expect(messages).to_have_count(50)
        await expect(messages.first.locator(".msg-body")).to_have_text("message 70")
        await older_pages_to_the_first_of_120(page)


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
            for i in range(120):
                await agent.send_message(Message.user(f"message {i}"))
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
            await expect(page.locator("#tail .ev-note")).to_contain_text("Session closed")
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


async def test_tail_resumes_across_a_server_restart(browser: Any, tmp_path: Path) -> None:
    """The server stops (1012) and starts again while the console watches and an agent
    keeps publishing: the tail goes on with no gap and no repeated text."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    server.extra = ("--port", str(server.port))  # the restart comes back on the same port
    try:
        url = f"ws://127.0.0.1:{server.port}"
        agent = await BambooClient.connect(url, "restart", create=True, role="agent", **FAST)
        async with agent:
            before = [f"a{i} " for i in range(10)]
            for piece in before:
                await agent.publish(AgentEvent.token(piece))
            page = await browser.new_page()
            await page.goto(console_url(server.port, "#/s/restart"))
            text = page.locator("#tail .ev-text .text")
            await expect(text).to_have_text("".join(before))

            after = [f"b{i} " for i in range(40)]

            async def publish_slowly() -> None:
                for piece in after:
                    await agent.publish(AgentEvent.token(piece))
                    await asyncio.sleep(0.01)

            publishing = asyncio.create_task(publish_slowly())
            await asyncio.sleep(0.1)
            assert await asyncio.to_thread(server.stop) == 0
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(publishing, 30)

            await expect(text).to_have_text("".join(before + after))
            await expect(text).to_have_count(1)
            state = page.locator("#conn-state")
            await expect(state).to_have_attribute("data-state", "open")
            assert int(await state.get_attribute("data-reconnects") or "0") >= 1
            assert agent.reconnects >= 1
            await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "50")
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


async def test_with_auth_a_user_token_sees_only_its_own_sessions(browser: Any) -> None:
    async with run_server(auth_secret=SECRET) as server:
        url = ws_url(server)
        alice, bob = make_token("alice"), make_token("bob")
        for sid, owner, title in [("a-1", alice, "Alice one"), ("a-2", alice, "Alice two")]:
            await make_session(url, sid, None, title, token=owner)
        await make_session(url, "b-1", None, "Bob one", token=bob)

        page = await browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(console_url(server.port))
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#token-input", "not-a-token")
        await page.click("#login button[type=submit]")
        await expect(page.locator("#login .notice")).to_contain_text("refused")

        await page.fill("#token-input", alice)
        await page.click("#login button[type=submit]")
        rows = page.locator("#sessions tbody tr")
        await expect(rows).to_have_count(2)
        assert sorted(await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")) == [
            "a-1",
            "a-2",
        ]
        await expect(page.locator("#who-name")).to_have_text("alice (user)")

        await submit_filters(page, user_id="bob")
        await expect(page.locator("#results .notice")).to_contain_text("403")

        await page.goto(console_url(server.port, "#/s/b-1"))
        await expect(page.locator("#status")).to_have_text("This token may not see this session.")
        await expect(page.locator("#meta dd")).to_have_count(0)

        await page.goto(console_url(server.port, "#/s/a-1"))
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
        async with await BambooClient.connect(url, "a-1", token=alice, role="agent") as agent:
            await agent.publish(AgentEvent.token("for alice only"))
            await expect(page.locator("#tail .ev-text .text")).to_have_text("for alice only")

        stored = await page.evaluate("sessionStorage.getItem('bamboo.console.token')")
        assert stored == alice
        assert not [u for u in requests if alice in u or "token" in u.split("/")[-1]]
        assert alice not in page.url

        await page.goto(console_url(server.port))
        await page.click("#who button")
        await expect(page.locator("#login")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('bamboo.console.token')") is None
        await page.fill("#token-input", make_token("root", role="admin"))
        await page.click("#login button[type=submit]")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#who-name")).to_have_text("root (admin)")


async def test_console_fits_a_narrow_screen(browser: Any) -> None:
    async with run_server() as server:
        url = ws_url(server)
        for i in range(3):
            await make_session(url, f"narrow-{i}", "alice", f"A rather long session title {i}")
        page = await browser.new_page(viewport={"width": 375, "height": 740})
        problems = watch_page(page)
        await page.goto(console_url(server.port))
        await expect(page.locator("#sessions tbody tr")).to_have_count(3)
        await expect(page.locator("#sessions thead")).to_be_hidden()  # rows become cards
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert await page.evaluate(fits)
        await page.click("#sessions a:text('narrow-1')")
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
        assert await page.evaluate(fits)
        meta, tail = page.locator("#meta"), page.locator("#tail")
        meta_box, tail_box = await meta.bounding_box(), await tail.bounding_box()
        assert meta_box is not None and tail_box is not None
        assert tail_box["y"] > meta_box["y"]  # one column
        assert problems == []


async def test_console_shows_markup_as_text_and_its_policy_blocks_injection(browser: Any) -> None:
    async with run_server() as server:
        title = '<img src=x onerror="window.pwned=1"><b>bold</b>'
        await make_session(ws_url(server), "xss", "mallory", title)
        page = await browser.new_page()
        await page.goto(console_url(server.port))
        cell = page.locator('#sessions tr[data-id="xss"] td[data-label="Title"]')
        await expect(cell).to_have_text(title)
        assert await cell.locator("img, b").count() == 0
        await page.goto(console_url(server.port, "#/s/xss"))
        await expect(page.locator("#session-title")).to_have_text(title)
        assert await page.evaluate("window.pwned") is None

        # Trusted Types: string sinks for HTML and script URLs throw on this page.
        for sink in (
            "document.body.innerHTML = '<i>x</i>'",
            "document.createElement('script').src = 'data:text/javascript,window.pwned=1'",
        ):
            attempt = f"() => {{ try {{ {sink}; return 'done'; }} catch (e) {{ return e.name; }} }}"
            assert await page.evaluate(attempt) == "TypeError", sink
        assert await page.evaluate("window.pwned") is None


@contextlib.asynccontextmanager
async def closed_while_the_page_is_away(
    browser: Any,
    session_id: str,
    refuse_reads: bool,
    tokens: int = 40,
    event: Callable[[int], Any] = lambda i: AgentEvent.token(f"b{i} "),
    proxy: HttpProxy | None = None,
    meanwhile: Callable[[BambooServer], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[Any, list[str], Any]]:
    """A console page (through a HttpProxy) shows a session's first events; its
    connection is cut and kept down while the agent publishes tokens, a message and a
    tool call, and closes the session; then the page's client reconnects, its resume is
    refused (4409) and it ends with ConnectionLost: the events after the ones it had
    never came. ``tokens``: how many tokens (``event(i)``) while it is away. ``refuse_reads``: the
    proxy then answers the page's HTTP reads with 503. ``meanwhile(server)``: what else
    happens once the session is closed, before the page reconnects. Yields the page, its
    problems (those the cut and the 503s cause left out), and the stored events (a page
    of them, read before the page reconnects), with the server and the proxy still up:
    the page reads over HTTP after its client ended."""
    async with run_server() as server:
        if proxy is None:
            proxy = HttpProxy(server.port)
        proxy.port = server.port
        port = await proxy.start()
        try:
            agent = await BambooClient.connect(
                ws_url(server), session_id, create=True, role="agent"
            )
            async with agent:
                for i in range(5):
                    await agent.publish(AgentEvent.token(f"a{i} "))
                page = await browser.new_page()
                problems = watch_page(page)
                await page.goto(console_url(port, f"#/s/{session_id}"))
                tail = page.locator("#tail")
                await expect(tail).to_have_attribute("data-last-seq", "5")
                proxy.cut()
                await expect(page.locator("#conn-state")).to_have_attribute(
                    "data-state", "reconnecting"
                )
                await asyncio.gather(*(agent.publish(event(i)) for i in range(tokens)))
                await agent.send_message(Message.assistant("Written while the page was away."))
                await agent.publish(AgentEvent.tool_start("call-9", "lookup", {"q": "x"}))
                await agent.publish(AgentEvent.tool_complete("call-9", ToolResult(True, "found")))
                await agent.publish(AgentEvent.token("the end."))
                await agent.set_state("closed")
            if meanwhile is not None:
                await meanwhile(server)
            # The log as it is when the page comes back (``meanwhile`` may change it later).
            status, stored = await get(server, f"/api/v1/sessions/{session_id}/events?limit=1000")
            assert status == 200, stored
            proxy.refusing = refuse_reads
            proxy.mend()
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
            # What the cut and the 503s make the browser report are not the page's problems
            # (a reconnect that the proxy, while down, ends at once: a reset, or on a busy
            # machine a socket already gone when the browser looks).
            caused = (
                "net::ERR_CONNECTION_RESET",
                "net::ERR_SOCKET_NOT_CONNECTED",
                "status of 503",
            )
            page_problems: list[str] = []
            yield page, page_problems, stored
            page_problems += [p for p in problems if not any(c in p for c in caused)]
        finally:
            await proxy.close()


async def test_events_the_page_missed_when_the_session_ended_are_read_over_http(
    browser: Any,
) -> None:
    """The session ends while the console's client is away, with events appended
    meanwhile: its client ends with ConnectionLost (events after seq 5 not delivered),
    which the page showed as a refusal, the client's raw message in red. It reads
    them over HTTP instead: the tail shows every event, the message list the new
    message, and the page that the session closed."""
    async with closed_while_the_page_is_away(browser, "behind", False) as (page, problems, stored):
        last_seq = stored["last_seq"]
        assert [e["seq"] for e in stored["events"]] == list(range(1, last_seq + 1))
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        tokens = "".join(f"a{i} " for i in range(5)) + "".join(f"b{i} " for i in range(40))
        await expect(tail.locator(".ev-text .text").first).to_have_text(tokens)
        await expect(tail.locator(".ev-text .text").last).to_have_text("the end.")
        await expect(tail.locator(".ev-message")).to_contain_text(
            "Written while the page was away."
        )
        await expect(tail.locator('details.ev-tool[data-tool="call-9"]')).to_have_attribute(
            "data-status", "done"
        )
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#meta-state")).to_have_text("closed")
        await expect(page.locator("#status .notice")).to_have_count(0)
    assert problems == []


async def test_events_the_page_missed_that_cannot_be_read_are_said_to_be_missing(
    browser: Any,
) -> None:
    """The same, but the page's HTTP reads fail (503): not a refusal either, but a
    notice that the events after seq 5 may be missing, with a button that reloads."""
    async with closed_while_the_page_is_away(browser, "behind-2", True) as (page, problems, _):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(page.locator("#status .notice-error")).to_have_count(0)
        await expect(page.locator("#reload")).to_be_visible()
        await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "5")
        await expect(page.locator("#tail .ev-note").last).to_contain_text("may be missing")
    assert problems == []


async def replace_session(server: BambooServer, session_id: str, epochs: list[str]) -> None:
    """Deletes the session and creates another under its id: a new log (another epoch,
    seqs from 1 again) of 60 tokens and a message, more events than the page had, then
    closes it. Its epoch goes to ``epochs``."""
    await server.manager.delete_session(session_id)
    async with await BambooClient.connect(
        ws_url(server), session_id, create=True, role="agent"
    ) as agent:
        for i in range(60):
            await agent.publish(AgentEvent.token(f"new{i} "))
        await agent.send_message(Message.assistant("Written in the session that replaced it."))
        await agent.set_state("closed")
        assert agent.epoch is not None
        epochs.append(agent.epoch)


async def expect_shown_as_replaced(page: Any, new_epoch: str) -> None:
    """The page shows that the session was replaced, with the events of the log it had
    (seq 5 the last) and none of the other's, and its Reload opens the session now
    under that id."""
    tail = page.locator("#tail")
    await expect(page.locator("#status .notice-warning")).to_contain_text("was replaced")
    await expect(tail.locator(".ev-note").last).to_contain_text("was replaced")
    await expect(tail).to_have_attribute("data-last-seq", "5")
    await expect(tail).not_to_contain_text("new0")
    await expect(page.locator("#messages")).not_to_contain_text("replaced it")
    await expect(page.locator("#meta-epoch")).not_to_have_text(new_epoch)
    await page.click("#reload")
    await expect(page.locator("#meta-epoch")).to_have_text(new_epoch)
    await expect(page.locator("#messages li .msg-body").last).to_have_text(
        "Written in the session that replaced it."
    )
    await expect(page.locator("#status .notice")).to_have_count(0)


async def test_a_session_replaced_while_the_page_was_away_is_not_spliced(browser: Any) -> None:
    """The session ends while the page is away, and is deleted and created again under
    its id (a new epoch, seqs from 1 again) before the page comes back: its client ends
    with ConnectionLost after seq 5 (the new log has events after 5). The page checks
    the epoch of the session it reads over HTTP against its stream's: another, so it
    shows none of the new log's events, but that the session was replaced, with a
    Reload that opens the new one. Before, it added the new log's events 6 and on to
    the tail, and its message to the list, as if they followed the old log's 5."""
    epochs: list[str] = []
    async with closed_while_the_page_is_away(
        browser,
        "replaced",
        False,
        meanwhile=lambda server: replace_session(server, "replaced", epochs),
    ) as (page, problems, _):
        await expect_shown_as_replaced(page, epochs[0])
    assert problems == []


async def test_a_session_replaced_while_the_page_reads_its_events_is_not_spliced(
    browser: Any,
) -> None:
    """The same, but the session is replaced between the page's read of its metadata
    (the epoch it had) and its read of the events: the events read are the new log's,
    and the page, which checks the epoch again after the read, shows none of them."""
    epochs: list[str] = []
    proxy = HttpProxy(0)

    async def replace_at_the_read(server: BambooServer) -> None:
        async def replace() -> None:
            await replace_session(server, "replaced-2", epochs)

        proxy.before_events_read = replace

    async with closed_while_the_page_is_away(
        browser, "replaced-2", False, proxy=proxy, meanwhile=replace_at_the_read
    ) as (page, problems, _):
        await expect(page.locator("#status .notice-warning")).to_contain_text("was replaced")
        assert proxy.before_events_read is None  # it ran
        await expect_shown_as_replaced(page, epochs[0])
    assert problems == []


async def test_reload_after_a_failed_read_shows_the_session_whole(browser: Any) -> None:
    """The page's HTTP reads of the events it missed fail (503), then work again. Its
    Reload reads them again: the tail shows every event (the ones shown before the
    failure still there, the missed ones after them) and nothing more says they may
    be missing, the message list holds the message written meanwhile, and the page
    says the session closed. A Reload while the reads still fail leaves the page as it
    is, with the warning and its button. Before, Reload reloaded the page, which shows
    a closed session's history and no events: the tail the page showed was gone."""
    proxy = HttpProxy(0)
    async with closed_while_the_page_is_away(browser, "behind-5", True, proxy=proxy) as (
        page,
        problems,
        stored,
    ):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        tail = page.locator("#tail")
        await page.evaluate("window.sameDocument = true")
        await page.click("#reload")  # the reads still fail
        await expect(page.locator("#reload")).to_be_enabled()
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(tail.locator(".ev-note", has_text="may be missing")).to_have_count(1)
        await expect(tail).to_have_attribute("data-last-seq", "5")

        proxy.refusing = False
        last_seq = stored["last_seq"]
        await page.click("#reload")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        texts = await tail.locator(".ev-text .text").all_text_contents()
        tokens = "".join(f"a{i} " for i in range(5)) + "".join(f"b{i} " for i in range(40))
        assert "".join(texts) == tokens + "the end.", texts
        await expect(tail.locator(".ev-message")).to_contain_text(
            "Written while the page was away."
        )
        await expect(tail.locator('details.ev-tool[data-tool="call-9"]')).to_have_attribute(
            "data-status", "done"
        )
        await expect(tail.locator(".ev-note", has_text="may be missing")).to_have_count(0)
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#meta-state")).to_have_text("closed")
        await expect(page.locator("#status .notice")).to_have_count(0)
        assert await page.evaluate("window.sameDocument") is True
    assert problems == []


async def test_more_events_missed_than_the_tail_holds_shows_the_newest(browser: Any) -> None:
    """The same with 1,200 tokens published while the page was away, more events than
    the tail shows (1,000 blocks): the page reads only the newest 998, after a line
    saying which are not shown, and the message list is read again from storage."""
    async with closed_while_the_page_is_away(browser, "behind-3", False, tokens=1200) as (
        page,
        problems,
        stored,
    ):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        note = f"Events 6{DASH}{last_seq - 998} are not shown"
        await expect(tail.locator(".ev-note").first).to_contain_text(note)
        await expect(tail.locator(".ev-text .text").last).to_have_text("the end.")
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#status .notice")).to_have_count(0)
    assert problems == []


async def test_more_events_missed_than_the_tail_holds_says_which_are_not_shown(
    browser: Any,
) -> None:
    """The same with 1,200 events of a block each (custom events, which do not grow one
    block as tokens do): the line saying which events are not shown stays in the tail,
    and so does the first of those read. Before, the page read 1,000 events after that
    line, and with the line that the session closed the tail (1,000 blocks) dropped
    that line (and, were each of them a block, the oldest event read): nothing said
    that events were left out."""
    async with closed_while_the_page_is_away(
        browser, "behind-4", False, 1200, lambda i: AgentEvent.custom("away", {"i": i})
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        note = tail.locator(".ev-note", has_text="are not shown")
        await expect(note).to_have_count(1)
        text = await note.text_content()
        assert text is not None and text.startswith(f"Events 6{DASH}"), text
        shown_from = int(text.split(DASH)[1].split(" ")[0]) + 1
        assert shown_from == last_seq - 997  # the newest 998, with the two lines
        after = note.locator("xpath=following-sibling::*[1]")
        await expect(after.locator(".seq")).to_have_text(f"#{shown_from}")
    assert problems == []


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([], id="empty"),
        pytest.param(
            [{"seq": 5, "ts": "2026-05-01T12:00:00Z", "event": {"type": "token", "content": "x"}}],
            id="stuck",
        ),
    ],
)
async def test_pages_of_events_that_stop_short_of_last_seq_are_said_to_be_missing(
    browser: Any, events: list[dict[str, Any]]
) -> None:
    """The page's reads of the events it missed are answered with pages that never
    reach the ``last_seq`` they state (what a server whose log lost them, or a cache
    between, could answer): empty, or holding no event after ``after_seq``. The page
    says that the events after seq 5 may be missing, after one read. Before, an empty
    page ended the read as if every event had come (the session shown as closed,
    nothing said of the missing ones), and a page of old events was asked for again,
    and again, with no end."""
    proxy = HttpProxy(0)
    proxy.events_page = {"events": events, "last_seq": 900}
    async with closed_while_the_page_is_away(
        browser, f"short-{len(events)}", False, proxy=proxy
    ) as (
        page,
        problems,
        _,
    ):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "5")
        await asyncio.sleep(0.5)
        assert proxy.events_reads == 1
    assert problems == []
