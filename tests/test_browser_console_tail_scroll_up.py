"""A viewer's scroll up in the console's tail while its session streams, in a real
headless Chromium: made before the frame of an event is drawn (the page's frames held,
so that the event and the scroll land in one frame every run), it is kept, whether
the viewer was following the end (it stops following: the next event does not pull
them back) or already scrolled up with blocks going above them. Before, the frame
undid it, and on a session streaming tens of events a second, nearly every frame has
events: the tail could hardly be scrolled up to read what the agent just said.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import eventually
from tests.console_support import ws_url
from tests.support import run_server
from tests.tail_support import IN_VIEW, MAX_BLOCKS, at_end, next_frame, open_tail, publish_steps
from tests.test_browser_console_tail_scrolled import (
    HOLD_FRAMES,
    held,
    scroll_event,
    scrolled_up_at_twice_the_bound,
)

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=30_000)

UP = 300  # px the viewer scrolls up

# Where the block that started at `seq` is, from the top of the tail's view.
TOP_OF = """(el, seq) => {
  const block = el.querySelector(`:scope > .ev[data-from="${seq}"]`);
  return block.getBoundingClientRect().top - el.getBoundingClientRect().top;
}"""


async def scroll_up_in_the_frame_of_a_step(agent: Any, page: Any, seq: int) -> None:
    """Step ``seq`` comes, and the viewer scrolls up UP px before its frame is drawn."""
    tail = page.locator("#tail")
    await tail.evaluate(HOLD_FRAMES)
    await agent.publish(AgentEvent.custom("step", {"i": "in the frame"}))
    await expect(tail).to_have_attribute("data-last-seq", str(seq))
    await tail.evaluate("(el, up) => { el.scrollTop -= up; }", UP)
    await scroll_event(page)
    await page.evaluate("() => releaseFrames()")
    await next_frame(page)


@pytest.mark.parametrize("steps", [100, MAX_BLOCKS + 10], ids=["below-the-bound", "at-the-bound"])
async def test_a_following_viewer_who_scrolls_up_in_the_frame_of_an_event_stays_there(
    browser: Any, steps: int
) -> None:
    """Following the end (below its bound, or at it: a block goes above the view with
    each event), the viewer scrolls up 300 px in an event's frame: once drawn, the
    block that was at the top of the view is 300 px below where it was, and it stays
    there when the next event comes (before, the frame pulled the viewer back to the
    end)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "up", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "up")
            await publish_steps(agent, 1, steps + 1)
            await expect(tail).to_have_attribute("data-last-seq", str(steps))
            await eventually(lambda: at_end(tail), "the tail following its end")
            await next_frame(page)
            seq, top = await tail.evaluate(IN_VIEW)

            await scroll_up_in_the_frame_of_a_step(agent, page, steps + 1)
            moved_to = await tail.evaluate(TOP_OF, seq)
            left_end = not await at_end(tail)
            await agent.publish(AgentEvent.custom("step", {"i": "after"}))
            await expect(tail).to_have_attribute("data-last-seq", str(steps + 2))
            await next_frame(page)
            after = await tail.evaluate(TOP_OF, seq), await at_end(tail)
    assert abs(moved_to - (top + UP)) <= 1, (moved_to, top)
    assert left_end
    assert abs(after[0] - moved_to) <= 1 and not after[1], (after, moved_to)
    assert problems == []


async def test_a_scrolled_up_viewer_who_scrolls_up_in_the_frame_of_an_event_stays_there(
    browser: Any,
) -> None:
    """Scrolled up, twice its bound held, an event comes (a block above the view goes)
    and the viewer scrolls up 300 px before its frame is drawn: once drawn, the block
    that was at the top of the view is 300 px below where it was (before, the frame put
    it back where it was: their scroll undone)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "further-up", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "further-up")
            await publish_steps(agent, 1, 101)
            await expect(tail).to_have_attribute("data-last-seq", "100")
            last = await scrolled_up_at_twice_the_bound(agent, page, 100, from_end=2000)
            seq, top = await tail.evaluate(IN_VIEW)

            await scroll_up_in_the_frame_of_a_step(agent, page, last + 1)
            moved_to = await tail.evaluate(TOP_OF, seq)
            held_then = await held(tail)
    assert abs(moved_to - (top + UP)) <= 1, (moved_to, top)
    assert held_then[1] == 2 * MAX_BLOCKS, held_then
    assert problems == []
