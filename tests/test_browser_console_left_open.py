"""The web console left open on busy sessions and a flaky network, in a real headless
Chromium: what bench/browser_soak.py found when pages watched agents for a long time,
each in a short test (the soak itself is a bench script, not part of the suite). A
block of tokens holds their text in a few nodes, not one per token; a read that hears
nothing (a server hung, SIGSTOP here; a connection gone silent) gives up after
READ_SILENCE and says so, and the server's figures say the server is away, instead of
"Loading…" and stale figures for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import console_url, ws_url
from tests.server_process import ServerProcess
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

# Text nodes a block of tokens may hold: its text, and one more beside each break.
FEW_NODES = 3
READ_SILENCE = 30_000  # api.js: ms a read may hear nothing before it gives up
STATS_SILENCE = 10_000  # stats.js: SILENCE_MS
STATS_PERIOD = 2_000  # stats.js: PERIOD_MS


async def test_a_block_of_tokens_holds_their_text_in_a_few_nodes(browser: Any) -> None:
    """Each token was a text node of its own: a block of 10,000 characters held some
    1,250 nodes, and the tail at its bound (1,000 blocks) over a million, hundreds of
    MB of Blink's heap after hours of a stream (bench/RESULTS.md). The block shows the
    same text, exactly, in a few nodes."""
    words = [f"w{i} " for i in range(600)]
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "stream", create=True, role="agent")
        async with await connect as agent:
            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(server.port, "#/s/stream"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            await asyncio.gather(*(agent.publish(AgentEvent.token(word)) for word in words))
            await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "600")
            block = page.locator("#tail .ev-text .text")
            await expect(block).to_have_count(1)
            shown = await block.evaluate("el => [el.textContent, el.childNodes.length]")
    assert shown[0] == "".join(words)
    assert shown[1] <= FEW_NODES
    assert problems == []


@contextlib.asynccontextmanager
async def hanging_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A server in a process of its own, for ``hang()``: SIGSTOP, as a server hung (or a
    path gone silent) leaves it: connections are accepted into its backlog, requests
    wait unread, nothing comes back. Continued (SIGCONT) and stopped on exit."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start_in_loop()
    try:
        yield server
    finally:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def hang(server: ServerProcess) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


async def test_a_read_that_hears_nothing_gives_up_and_says_so(browser: Any, tmp_path: Path) -> None:
    """A read whose answer never comes (a server hung, a connection gone silent: no
    FIN, no RST, which the browser keeps "open" for as long as TCP retries, or for ever
    behind a proxy that still acknowledges) held the list's "Loading…" for good. It
    gives up once nothing came for READ_SILENCE, and says so."""
    async with hanging_server(tmp_path) as server:
        page = await browser.new_page()
        await page.clock.install()  # the silence is waited on the page's clock
        await page.goto(console_url(server.port))
        results = page.locator("#results")
        await expect(results.locator(".empty")).to_have_text("No sessions match.")
        hang(server)
        await page.click("#filters button[type=submit]")
        await expect(results).to_have_text("Loading…")
        await page.clock.fast_forward(READ_SILENCE)
        await expect(results).to_have_text(
            "Could not list sessions (ReadSilent: no answer from the server for 30 s)"
        )


async def test_the_figures_say_the_server_is_away_when_their_read_hears_nothing(
    browser: Any, tmp_path: Path
) -> None:
    """A read of the server's figures that never got its answer left the last figures
    shown as the server's for good, and each later read (one every period) took one
    more of the browser's few connections to the server, which the page's other reads
    then waited for. One read at a time, given up after STATS_SILENCE: the server is
    said to be away."""
    async with hanging_server(tmp_path) as server:
        page = await browser.new_page()
        await page.clock.install()
        await page.goto(console_url(server.port))
        await expect(page.locator("#stat-connections")).to_have_text("0")
        away = page.locator("#stats-away")
        await expect(away).to_be_hidden()
        hang(server)
        await page.clock.fast_forward(STATS_PERIOD)  # the next read: never answered
        await page.clock.fast_forward(STATS_SILENCE)  # (a jump fires a timer set in it later)
        await expect(away).to_be_visible()
        await expect(page.locator("#stats")).to_have_attribute("data-stale", "true")
