"""The web console left open on busy sessions and a flaky network, in a real headless
Chromium: what bench/browser_soak.py found when pages watched agents for a long time,
each in a short test (the soak itself is a bench script, not part of the suite). A
block of tokens holds their text in a few nodes, not one per token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import console_url, ws_url
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

# Text nodes a block of tokens may hold: its text, and one more beside each break.
FEW_NODES = 3


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
