"""The console's tail following its end through what its own lines and reads do, in a
real headless Chromium: lines taken back in the middle of a frame (the catch-up's "may
be missing" ones, once its Reload reads the events) leave it following, and a read of
earlier events the viewer asked for ("Show earlier" on a tail that fits its view) keeps
what it read, the viewer up with them, until they go back to the end.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import eventually
from tests.console_missed_support import closed_while_the_page_is_away
from tests.console_support import DASH, ws_url
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.tail_support import (
    BLOCKS,
    EARLIER_PAGE,
    IN_VIEW,
    MAX_BLOCKS,
    at_end,
    next_frame,
    open_tail,
    publish_steps,
)
from tests.test_browser_console_tail_scrolled import HOLD_FRAMES, scroll_event

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=20_000)

END_SLACK = 40  # tail.js: px from the end that still are the end
VIEWER_UP = 60  # px a viewer scrolls up in a frame: more than END_SLACK


def step(i: int) -> AgentEvent:
    return AgentEvent.custom("step", {"i": i})


# The px of the lines a Reload takes back (the session closed, events may be missing).
TAKEN_BACK_PX = """el => [...el.querySelectorAll(":scope > .ev-note")]
  .filter(n => /^Session closed|may be missing/.test(n.textContent))
  .reduce((px, n) =>
    px + n.getBoundingClientRect().height + parseFloat(getComputedStyle(el).rowGap), 0)
"""


async def following_before_reload(page: Any) -> tuple[Any, int]:
    """The page's tail, once a failed catch-up said events may be missing, on a short
    view scrolled to its end (following), and the px of the lines a Reload takes back."""
    tail = page.locator("#tail")
    await expect(tail.locator(".ev-note").last).to_contain_text("may be missing")
    await page.set_viewport_size({"width": 320, "height": 800})
    await tail.evaluate("el => { el.scrollTop = el.scrollHeight; }")  # the viewer's end
    await next_frame(page)
    await eventually(lambda: at_end(tail), "the tail at its end")
    return tail, await tail.evaluate(TAKEN_BACK_PX)


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
        tail, taken_back = await following_before_reload(page)

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


async def test_show_earlier_on_a_tail_that_fits_keeps_what_it_read(browser: Any) -> None:
    """A live session of 1,000 steps then 200 tokens: its page replays the tokens (one
    block, which fits the view: the tail follows its end) and says events 1-1000 are
    not shown. "Show earlier" reads a page of them: the tail keeps all it could (what a
    tail scrolled up keeps, twice its bound) and the viewer is taken up to them, so the
    next events do not drop them; back at the end, it follows, at its bound. Before,
    the following tail dropped to its bound as the read was drawn: half of what the
    viewer asked to see went at once."""
    steps = EARLIER_PAGE
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "fits", create=True, role="agent")
        async with await connect as agent:
            await publish_steps(agent, 1, steps + 1)
            for i in range(200):
                await agent.publish(AgentEvent.token(f"t{i} "))
            page, problems, tail = await open_tail(browser, server.port, "fits")
            await expect(tail).to_have_attribute("data-last-seq", str(steps + 200))
            header = page.locator("#tail-earlier")
            await expect(header).to_contain_text(f"Events 1{DASH}{steps} not shown")
            assert await tail.evaluate("el => el.scrollHeight <= el.clientHeight")

            await header.get_by_role("button", name="Show earlier").click()
            kept = 2 * MAX_BLOCKS - 1  # (the text block the 600th)
            await expect(header).to_contain_text(f"Events 1{DASH}{steps - kept} not shown")
            for i in range(2):  # events come, below (into the text block: no more blocks)
                await agent.publish(AgentEvent.token(f"u{i} "))
            await expect(tail).to_have_attribute("data-last-seq", str(steps + 202))
            await next_frame(page)
            blocks = await tail.evaluate(BLOCKS)
            in_view = await tail.evaluate(IN_VIEW)
            await expect(header).to_contain_text(f"Events 1{DASH}{steps - kept} not shown")

            await tail.evaluate("el => { el.scrollTop = el.scrollHeight; }")  # back at the end
            await next_frame(page)
            await eventually(lambda: at_end(tail), "the tail at its end")
            await expect(tail.locator(":scope > .ev")).to_have_count(MAX_BLOCKS)
    assert in_view is not None and in_view[0] == steps - kept + 1  # the first read, in view
    assert [seq for seq, _, _ in blocks][:kept] == list(range(steps - kept + 1, steps + 1))
    assert len(blocks) == kept + 1
    assert problems == []


async def test_a_viewer_who_scrolls_up_in_the_frame_lines_are_taken_back_in_stays_there(
    browser: Any,
) -> None:
    """As above, the page following its end, Reload takes back the lines and brings the
    events (steps, no message: nothing but the tail forces a layout in the middle of
    the task), and the viewer scrolls up 60 px before that frame is drawn (more than
    END_SLACK: in a frame that takes nothing back, it stops following). They stay
    where they scrolled to, not pulled back to the end. Before, the allowance was the
    lines' height, whether the browser had moved the scroll by that or not: the
    viewer's move up within it was taken for the browser's, the tail followed on, and
    the frame put them back at the end."""
    proxy = HttpProxy(0)
    proxy.refusal = "Service Unavailable: the server is draining its connections to restart"
    first = tuple(AgentEvent.custom("before", {"i": i}) for i in range(60))
    async with closed_while_the_page_is_away(
        browser,
        "taken-back-up",
        True,
        tokens=5,
        event=step,
        proxy=proxy,
        first=first,
        message=False,
    ) as (page, problems, stored):
        tail, taken_back = await following_before_reload(page)
        began_at = await tail.evaluate("el => el.scrollTop")

        await tail.evaluate(HOLD_FRAMES)
        proxy.refusing = False
        await page.click("#reload")
        await expect(tail).to_have_attribute("data-last-seq", str(stored["last_seq"]))
        browser_moved = began_at - await tail.evaluate("el => el.scrollTop")
        await tail.evaluate("(el, up) => { el.scrollTop -= up; }", VIEWER_UP)
        await scroll_event(page)
        viewer_at = await tail.evaluate("el => el.scrollTop")
        await page.evaluate("() => releaseFrames()")
        await next_frame(page)
        await next_frame(page)
        settled_at = await tail.evaluate("el => el.scrollTop")
        left_end = not await at_end(tail)
    assert taken_back > VIEWER_UP  # (a move up within the lines' height)
    assert left_end, (taken_back, browser_moved, viewer_at, settled_at)
    assert abs(settled_at - viewer_at) <= 1, (viewer_at, settled_at)
    assert problems == []
