"""The web console in a real headless Chromium, as a watched session ends while the
page is away: the server restarts (it says `closed`, "server restarting", then closes
with 1012), and the session is closed before the page resumes. The tail names that
end, not the restart's reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import console_url
from tests.server_process import ServerProcess, assert_no_tracebacks

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


async def test_a_session_closed_during_a_restart_ends_the_tail_as_closed(
    browser: Any, tmp_path: Path
) -> None:
    """The page's resume is refused with 4409 ("session closed"): the session was closed
    while the server it watched was down (by another server process on the same data).
    The `closed` frame of the restart ("server restarting") came on the connection
    before: it says nothing of how the session ended."""
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log")
    other = ServerProcess(data, tmp_path / "other.log")
    await server.start_in_loop()
    server.extra = ("--port", str(server.port))  # the restart comes back on the same port
    try:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "ended", create=True) as agent:
            await agent.publish(AgentEvent.custom("step", 1))
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/ended"))
        state = page.locator("#conn-state")
        await expect(state).to_have_attribute("data-state", "open")
        notes = page.locator("#tail .ev-note")
        # Event #1 comes after the welcome that opens the state: shown before the stop,
        # or the page is disconnected after #0 (so a CI run under load saw it).
        await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "1")

        assert await asyncio.to_thread(server.stop) == 0
        await expect(notes.first).to_contain_text("(1012 server restarting): reconnecting")
        await other.start_in_loop()
        async with await BambooClient.connect(f"ws://127.0.0.1:{other.port}", "ended") as closer:
            await closer.set_state("closed")
        assert await asyncio.to_thread(other.stop) == 0
        await server.start_in_loop()

        await expect(state).to_have_attribute("data-state", "closed")
        await expect(notes).to_have_text(
            [
                "Disconnected after #1 (1012 server restarting): reconnecting" + ELLIPSIS,
                "Connection ended: 4409 session closed.",
                "Session closed: session closed",
            ]
        )
        await expect(page.locator("#meta-state")).to_have_text("closed")
        # The page's reconnects while the server was down: refused connections only.
        assert [p for p in problems if "ERR_CONNECTION_REFUSED" not in p] == []
    finally:
        server.kill()
        other.kill()
    assert_no_tracebacks(server.log_records())


async def test_a_page_cut_before_any_event_says_so(browser: Any, tmp_path: Path) -> None:
    """A page watching a session with no event yet, through a restart: its notes say
    "before any event", not "after #0" (there is no event 0), and the resume settles
    on the first event that comes."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start_in_loop()
    server.extra = ("--port", str(server.port))  # the restart comes back on the same port
    try:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "empty", create=True):
            pass
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/empty"))
        state = page.locator("#conn-state")
        await expect(state).to_have_attribute("data-state", "open")
        notes = page.locator("#tail .ev-note")

        assert await asyncio.to_thread(server.stop) == 0
        await expect(notes.first).to_have_text(
            "Disconnected before any event (1012 server restarting): reconnecting" + ELLIPSIS
        )
        await server.start_in_loop()
        await expect(state).to_have_attribute("data-state", "open")
        async with await BambooClient.connect(url, "empty") as agent:
            await agent.publish(AgentEvent.custom("step", 1))
        await expect(notes).to_have_text(
            [
                "Disconnected before any event (1012 server restarting): reconnecting" + ELLIPSIS,
                "Reconnected before any event: resumed, no event missed (#1 follows).",
            ]
        )
        assert [p for p in problems if "ERR_CONNECTION_REFUSED" not in p] == []
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())
