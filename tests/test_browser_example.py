"""examples/browser/ in headless Chromium: the chat page, served from another origin,
talks to the echo agent (examples/browser/echo_agent.py) through the server, streams
its reply as growing text, and shows the same conversation once after a reload."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from typing import Any

import pytest

from bamboo_session.protocol.client.tasks import stopped
from tests.browser import ROOT, eventually, static_server, watch_page
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = ROOT / "examples" / "browser"
# Records every text the streaming reply shows, as it grows.
RECORD_STREAM = """
window.streamed = [];
new MutationObserver(() => {
  const el = document.querySelector(".msg.streaming");
  if (el && window.streamed.at(-1) !== el.textContent) window.streamed.push(el.textContent);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def load_echo_agent() -> Any:
    spec = importlib.util.spec_from_file_location("echo_agent", EXAMPLE / "echo_agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_chat_page_talks_to_the_echo_agent(browser: Any) -> None:
    echo = load_echo_agent()
    async with run_server(shutdown_grace=0.5) as server:
        ws = f"ws://127.0.0.1:{server.port}"
        agent = asyncio.create_task(echo.run_echo_agent(ws, "demo", word_delay=0.03))
        try:
            await eventually(lambda: _attached(server, "demo"), "the agent attached", timeout=10)
            with static_server(EXAMPLE) as site:
                page = await browser.new_page()
                problems = watch_page(page)
                await page.add_init_script(RECORD_STREAM)
                url = f"{site}/index.html?server=http://127.0.0.1:{server.port}&session=demo"
                await page.goto(url)
                await expect(page.locator("#status")).to_have_text("connected")

                await page.fill("#text", "hello from the page")
                await page.press("#text", "Enter")
                messages = page.locator("#messages li")
                await expect(messages).to_have_count(2)
                await expect(messages.last).to_have_text("You said: hello from the page")
                await expect(messages.last).to_have_class("msg assistant")
                streamed = await page.evaluate("window.streamed")
                assert len(streamed) >= 3, streamed  # it grew, token by token
                assert all(b.startswith(a) for a, b in itertools.pairwise(streamed))
                assert streamed[-1] == "You said: hello from the page"

                await page.reload()
                await expect(page.locator("#status")).to_have_text("connected")
                await expect(messages).to_have_count(2)
                texts = await messages.all_text_contents()
                assert texts == ["hello from the page", "You said: hello from the page"]
                await page.close()
                assert problems == []
        finally:
            await stopped(agent)


async def _attached(server: Any, session_id: str) -> bool:
    metadata = await server.manager.get_metadata(session_id)
    return metadata is not None and metadata.connections > 0
