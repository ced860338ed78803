"""What the browser tests of the console's tail share: its bounds as tail.js has them,
and how a test reads the tail's blocks, waits for "Show earlier", and finds where the
viewer is (tests/test_browser_console_tail_*.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bamboo_session.protocol.models import AgentEvent
from tests.browser import eventually, watch_page
from tests.console_support import console_url

MAX_TAIL_CHARS = 500_000  # tail.js
MAX_BLOCKS = 300  # tail.js
EARLIER_PAGE = 1000  # tail.js: events a "Show earlier" reads

# The tail's blocks, each as [first seq, last seq (text blocks), its characters].
BLOCKS = """el => [...el.querySelectorAll(":scope > .ev")].map(b => [
  Number(b.dataset.from ?? 0), Number(b.dataset.to ?? b.dataset.from ?? 0), b.textContent.length,
])"""
# Whether "Show earlier" is done reading (or there is nothing more to read).
READ_DONE = """() => {
  const h = document.getElementById("tail-earlier");
  return h === null || !h.textContent.includes("reading");
}"""
# How far the tail is from its end, in px.
FROM_END = "el => el.scrollHeight - el.scrollTop - el.clientHeight"
# The first block in the tail's view (not its first line), and where it is in the view.
IN_VIEW = """el => {
  const top = el.getBoundingClientRect().top;
  for (const b of el.querySelectorAll(":scope > .ev")) {
    const rect = b.getBoundingClientRect();
    if (rect.bottom > top) return [Number(b.dataset.from), Math.round(rect.top - top)];
  }
  return null;
}"""


async def at_end(tail: Any) -> bool:
    return bool(await tail.evaluate(f"el => ({FROM_END})(el) < 2"))


async def show_earlier_until_all(page: Any) -> int:
    """Click "Show earlier" (without scrolling to it, as a viewer's place is kept) until
    the tail shows every event; the clicks."""
    header = page.locator("#tail-earlier")
    clicks = 0
    while await header.count() > 0:
        assert clicks < 20, await header.text_content()
        button = header.get_by_role("button", name="Show earlier")
        await button.evaluate("b => b.click()")
        clicks += 1
        await eventually(lambda: page.evaluate(READ_DONE), "the read of earlier events")
        await next_frame(page)
    return clicks


async def next_frame(page: Any) -> None:
    await page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")


async def publish_steps(agent: Any, start: int, end: int) -> None:
    """Steps ``start`` to ``end - 1`` (a block each in the tail), published at once."""
    await asyncio.gather(
        *(agent.publish(AgentEvent.custom("step", {"i": i})) for i in range(start, end))
    )


async def open_tail(browser: Any, port: int, session_id: str) -> tuple[Any, list[str], Any]:
    """A new page of the console on ``session_id``'s tail, once its live connection is
    open: the page, the problems it reports (tests.browser.watch_page) and the tail."""
    from playwright.async_api import expect

    page = await browser.new_page()
    problems = watch_page(page)
    await page.goto(console_url(port, f"#/s/{session_id}"))
    await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
    return page, problems, page.locator("#tail")
