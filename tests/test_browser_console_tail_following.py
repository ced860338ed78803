"""The console's tail following its end through what its own lines do, in a real
headless Chromium: lines taken back in the middle of a frame (the catch-up's "may be
missing" ones, once its Reload reads the events) leave it following.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from tests.browser import eventually
from tests.console_missed_support import closed_while_the_page_is_away
from tests.proxies import HttpProxy
from tests.tail_support import at_end, next_frame

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=20_000)

END_SLACK = 40  # tail.js: px from the end that still are the end
# The px of the lines a Reload takes back (the session closed, events may be missing).
TAKEN_BACK_PX = """el => [...el.querySelectorAll(":scope > .ev-note")]
  .filter(n => /^Session closed|may be missing/.test(n.textContent))
  .reduce((px, n) =>
    px + n.getBoundingClientRect().height + parseFloat(getComputedStyle(el).rowGap), 0)
"""


async def test_lines_taken_back_in_a_frame_leave_the_tail_following(browser: Any) -> None:
    """A page (320 px wide, a phone's) shows 60 steps, following its end, when its
    session ends while it is cut off, and the read of what it missed fails with a long
    reason: the tail says, on several lines, which events may be missing, and that the
    session closed. Reload reads them: those lines go, and the events come in after
    them, in one task in which the message list measures itself for the message (a
    layout forced in the middle of the tail's frame). The tail ends at its end,
    following. Before, the lines taken back made the tail shorter below the view, that
    layout moved the scroll up to the end as laid out then, and the events added after
    it read as the viewer's scroll up: the tail stopped following, short of its end."""
    proxy = HttpProxy(0)
    proxy.refusal = "Service Unavailable: the server is draining its connections to restart"
    first = tuple(AgentEvent.custom("before", {"i": i}) for i in range(60))
    async with closed_while_the_page_is_away(
        browser, "taken-back", True, tokens=0, proxy=proxy, first=first
    ) as (page, problems, stored):
        tail = page.locator("#tail")
        await expect(tail.locator(".ev-note").last).to_contain_text("may be missing")
        await page.set_viewport_size({"width": 320, "height": 800})
        await tail.evaluate("el => { el.scrollTop = el.scrollHeight; }")  # the viewer's end
        await next_frame(page)
        await eventually(lambda: at_end(tail), "the tail at its end")
        taken_back = await tail.evaluate(TAKEN_BACK_PX)

        proxy.refusing = False
        await page.click("#reload")
        await expect(tail).to_have_attribute("data-last-seq", str(stored["last_seq"]))
        await expect(tail.locator(".ev-note", has_text="may be missing")).to_have_count(0)
        message = tail.locator(".ev-message")  # (in the tail as the layout was forced)
        gap = await tail.evaluate("el => parseFloat(getComputedStyle(el).rowGap)")
        added = (await message.bounding_box())["height"] + gap
        assert taken_back - added > END_SLACK  # (the end that layout saw: above the end)
        await eventually(lambda: at_end(tail), "the tail at its end, following")
    assert problems == []
