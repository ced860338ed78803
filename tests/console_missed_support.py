"""What the browser tests of a console page that was behind when its session ended share:
the page cut off while the agent publishes and closes the session, then back
(tests/test_browser_console_missed.py, tests/test_browser_console_tail_gap.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.models import ToolResult
from bamboo_session.server.app import BambooServer
from tests.browser import watch_page
from tests.console_support import console_url, ws_url
from tests.proxies import HttpProxy
from tests.support import get, run_server


@contextlib.asynccontextmanager
async def closed_while_the_page_is_away(
    browser: Any,
    session_id: str,
    refuse_reads: bool,
    tokens: int = 40,
    event: Callable[[int], Any] = lambda i: AgentEvent.token(f"b{i} "),
    proxy: HttpProxy | None = None,
    meanwhile: Callable[[BambooServer], Awaitable[None]] | None = None,
    first: Sequence[AgentEvent] = tuple(AgentEvent.token(f"a{i} ") for i in range(5)),
    while_away: Callable[[Any], Awaitable[None]] | None = None,
    message: bool = True,
) -> AsyncIterator[tuple[Any, list[str], Any]]:
    """A console page (through a HttpProxy) shows a session's first events; its
    connection is cut and kept down while the agent publishes tokens, a message and a
    tool call, and closes the session; then the page's client reconnects, its resume is
    refused (4409) and it ends with ConnectionLost: the events after the ones it had
    never came. ``tokens``: how many tokens (``event(i)``) while it is away. ``refuse_reads``: the
    proxy then answers the page's HTTP reads with 503. ``meanwhile(server)``: what else
    happens once the session is closed, before the page reconnects. ``first``: the
    events the page shows before it is cut off (5 tokens); ``while_away(page)``: what
    its viewer does meanwhile, before it reconnects; ``message``: whether the agent
    writes a message meanwhile (one, before the tool call). Yields the page, its
    problems (those the cut and the 503s cause left out), and the stored events (a page
    of them, read before the page reconnects), with the server and the proxy still up:
    the page reads over HTTP after its client ended."""
    from playwright.async_api import expect  # (the tests skip without it)

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
                for event_before in first:
                    await agent.publish(event_before)
                page = await browser.new_page()
                problems = watch_page(page)
                await page.goto(console_url(port, f"#/s/{session_id}"))
                tail = page.locator("#tail")
                await expect(tail).to_have_attribute("data-last-seq", str(len(first)))
                proxy.cut()
                await expect(page.locator("#conn-state")).to_have_attribute(
                    "data-state", "reconnecting"
                )
                await asyncio.gather(*(agent.publish(event(i)) for i in range(tokens)))
                if message:
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
            if while_away is not None:
                await while_away(page)
            proxy.refusing = refuse_reads
            proxy.mend()
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
            # What the cut and the 503s make the browser report are not the page's problems
            # (a reconnect that the proxy, while down, ends at once: a reset, or on a busy
            # machine a socket already gone when the browser looks, or closed before the
            # upgrade's answer: a CI run under load).
            caused = (
                "net::ERR_CONNECTION_RESET",
                "net::ERR_SOCKET_NOT_CONNECTED",
                "Connection closed before receiving a handshake response",
                "status of 503",
            )
            page_problems: list[str] = []
            yield page, page_problems, stored
            page_problems += [p for p in problems if not any(c in p for c in caused)]
        finally:
            await proxy.close()
