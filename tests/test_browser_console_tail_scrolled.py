"""The console's tail while its viewer is scrolled up through a long stream, in a real
headless Chromium: it keeps more than its bound then (so that what they read stays),
never more than twice it, in characters and in blocks, at any moment the page could
be seen; a viewer whose block goes sees the one that followed it; and once the viewer
is back at the end it holds its bound again, without waiting for the next event, even
when they scroll there in the frame of an event (the page's frames held), in which a
scroll down is kept too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import eventually
from tests.console_support import ws_url
from tests.support import run_server
from tests.tail_support import (
    BLOCKS,
    IN_VIEW,
    MAX_BLOCKS,
    MAX_TAIL_CHARS,
    at_end,
    next_frame,
    open_tail,
    publish_steps,
)

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=30_000)

# Records the most the tail's blocks held, in characters and in blocks, after every
# change to it (a MutationObserver runs once each task that changed it is done).
WATCH_MOST = """el => {
  window.mostHeld = { chars: 0, blocks: 0 };
  new MutationObserver(() => {
    const blocks = el.querySelectorAll(":scope > .ev");
    let chars = 0;
    for (const b of blocks) chars += b.textContent.length;
    mostHeld.chars = Math.max(mostHeld.chars, chars);
    mostHeld.blocks = Math.max(mostHeld.blocks, blocks.length);
  }).observe(el, { childList: true, subtree: true, characterData: true });
}"""


async def held(tail: Any) -> tuple[int, int]:
    blocks = await tail.evaluate(BLOCKS)
    return sum(chars for _, _, chars in blocks), len(blocks)


async def within_bound(tail: Any) -> bool:
    chars, blocks = await held(tail)
    return chars <= MAX_TAIL_CHARS and blocks <= MAX_BLOCKS


async def test_a_tail_scrolled_up_keeps_at_most_twice_its_bound_and_drops_to_it_at_the_end(
    browser: Any,
) -> None:
    """310 steps, then the viewer scrolls to the middle of the tail and does not scroll
    while 1,200 tokens of 1,000 characters (1.2 million) and then 700 steps arrive: the
    tail holds more than its bound, up to twice it and never more, in characters and
    then in blocks, and the viewer stays scrolled up. Scrolled to the end, with no event
    after, it drops to its bound (before, it kept what it held until the next event); it
    follows the end again."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "reading", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "reading")
            seq = 0

            async def publish(events: list[Any]) -> None:
                nonlocal seq
                for start in range(0, len(events), 100):
                    batch = events[start : start + 100]
                    await asyncio.gather(*(agent.publish(event) for event in batch))
                    seq += len(batch)
                    await expect(tail).to_have_attribute("data-last-seq", str(seq))
                    await next_frame(page)
                    assert not await at_end(tail), seq  # still scrolled up

            steps = [AgentEvent.custom("step", {"i": i}) for i in range(310)]
            await asyncio.gather(*(agent.publish(event) for event in steps))
            seq = len(steps)
            await expect(tail).to_have_attribute("data-last-seq", str(seq))
            await next_frame(page)  # (a following tail drops to its bound as it is drawn)
            assert await held(tail) <= (MAX_TAIL_CHARS, MAX_BLOCKS)
            await tail.evaluate("el => { el.scrollTop = el.scrollHeight / 2; }")
            await next_frame(page)
            await tail.evaluate(WATCH_MOST)
            await publish([AgentEvent.token(f"{i:05d} " + "x" * 994) for i in range(1200)])
            most_in_tokens = await page.evaluate("() => ({ ...mostHeld })")
            await publish([AgentEvent.custom("step", {"i": i}) for i in range(700)])
            most = await page.evaluate("() => mostHeld")

            await tail.evaluate("el => { el.scrollTop = el.scrollHeight; }")  # at the end
            await eventually(lambda: at_end(tail), "the tail at its end")
            # The scroll's event comes with the next frame drawn, after this call.
            await eventually(lambda: within_bound(tail), "the tail back within its bound")
            at_the_end = await held(tail)
            assert (await tail.get_attribute("data-last-seq")) == str(seq)  # no new event
            await agent.publish(AgentEvent.custom("step", {"i": "after"}))
            await expect(tail).to_have_attribute("data-last-seq", str(seq + 1))
            await eventually(lambda: at_end(tail), "the tail following its end")
            after = await held(tail)
    # Scrolled up: more than the bound, never more than twice it.
    assert MAX_TAIL_CHARS < most_in_tokens["chars"] <= 2 * MAX_TAIL_CHARS, most_in_tokens
    assert most["chars"] <= 2 * MAX_TAIL_CHARS, most
    assert most["blocks"] == 2 * MAX_BLOCKS, most
    # Back at the end: the bound, before and after the next event.
    assert at_the_end[0] <= MAX_TAIL_CHARS and at_the_end[1] <= MAX_BLOCKS, at_the_end
    assert after[0] <= MAX_TAIL_CHARS and after[1] <= MAX_BLOCKS, after
    assert problems == []


async def test_a_viewer_whose_block_goes_sees_what_followed_it(browser: Any) -> None:
    """Scrolled up with step #21 at the top of the view, 320 steps arrive: the tail, past
    twice its bound, drops #11-#30, the viewer's block among them. The first block in
    view is then #31, the first kept after it, not far below (before, the view stayed
    where it was in pixels, so what came into it was 10 blocks further on, #41)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "passed", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "passed")

            await publish_steps(agent, 1, MAX_BLOCKS + 11)
            await expect(tail).to_have_attribute("data-last-seq", str(MAX_BLOCKS + 10))
            await expect(tail.locator(".ev-custom").first.locator(".seq")).to_have_text("#11")
            await tail.evaluate(
                """el => {
                  const b = el.querySelector(':scope > .ev[data-from="21"]');
                  el.scrollTop += b.getBoundingClientRect().top - el.getBoundingClientRect().top;
                }"""
            )
            await next_frame(page)
            assert (await tail.evaluate(IN_VIEW))[0] == 21
            last = 2 * MAX_BLOCKS + 30
            await publish_steps(agent, MAX_BLOCKS + 11, last + 1)
            await expect(tail).to_have_attribute("data-last-seq", str(last))
            await expect(tail.locator(".ev-custom").first.locator(".seq")).to_have_text("#31")
            await next_frame(page)
            assert (await tail.evaluate(IN_VIEW))[0] == 31
            assert not await at_end(tail)
    assert problems == []


# Holds the page's animation frames (tail.js settles its scroll in one) until
# `releaseFrames()`, so that events and a scroll land in one frame every run; counts
# the tail's scroll events (`scrolls`), each after the tail's own listener has run.
HOLD_FRAMES = """el => {
  const held = [];
  const real = window.requestAnimationFrame;
  window.requestAnimationFrame = (callback) => { held.push(callback); return 0; };
  window.releaseFrames = () => {
    window.requestAnimationFrame = real;
    for (const callback of held) real(callback);
  };
  window.scrolls = 0;
  el.addEventListener("scroll", () => { window.scrolls += 1; });
}"""


async def scroll_event(page: Any) -> None:
    """Waits for the tail's scroll event (HOLD_FRAMES)."""
    await eventually(lambda: page.evaluate("() => scrolls > 0"), "the scroll's event")


async def scrolled_up_at_twice_the_bound(agent: Any, page: Any, seq: int, from_end: int) -> int:
    """With events 1 to ``seq`` shown, a block each (more than the view holds), the
    viewer scrolls to the top and steps come until the tail holds twice its bound; the
    viewer then scrolls to ``from_end`` px above its end. The last seq."""
    tail = page.locator("#tail")
    await tail.evaluate("el => { el.scrollTop = 0; }")
    await next_frame(page)
    last = 2 * MAX_BLOCKS
    await publish_steps(agent, seq + 1, last + 1)
    await expect(tail).to_have_attribute("data-last-seq", str(last))
    await tail.evaluate(
        "(el, px) => { el.scrollTop = el.scrollHeight - el.clientHeight - px; }", from_end
    )
    await next_frame(page)
    assert (await held(tail))[1] == 2 * MAX_BLOCKS
    assert not await at_end(tail)
    return last


@pytest.mark.parametrize("tall", [False, True], ids=["a-step-to-the-end", "a-tall-block-below"])
async def test_a_scroll_to_the_end_in_the_frame_of_an_event_drops_the_tail_to_its_bound(
    browser: Any, tall: bool
) -> None:
    """Scrolled up, twice its bound held, an event comes and the viewer scrolls to the
    end before its frame is drawn: to the end as laid out (a step came), or (a tall
    block came) to where the end was when the page was last drawn, which a wheel
    scrolls by. Once drawn, the tail holds its bound and the viewer is at the end
    (before, the frame put the viewer back where they were, twice the bound held)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "to-end", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "to-end")
            await publish_steps(agent, 1, 101)
            await expect(tail).to_have_attribute("data-last-seq", "100")
            last = await scrolled_up_at_twice_the_bound(agent, page, 100, from_end=2000)
            drawn_end = await tail.evaluate("el => el.scrollHeight - el.clientHeight")

            await tail.evaluate(HOLD_FRAMES)
            step = AgentEvent.custom("step", {"i": "in the frame"})
            await agent.publish(AgentEvent.token("tall " * 1900) if tall else step)
            await expect(tail).to_have_attribute("data-last-seq", str(last + 1))
            to = drawn_end if tall else 10**9  # (past the end: the end)
            await tail.evaluate("(el, to) => { el.scrollTop = to; }", to)
            assert await at_end(tail) != tall  # the tall block is below the view
            await scroll_event(page)
            await page.evaluate("() => releaseFrames()")
            await next_frame(page)
            at_the_end = await at_end(tail), await held(tail)
    assert at_the_end[0], at_the_end
    assert at_the_end[1][0] <= MAX_TAIL_CHARS and at_the_end[1][1] <= MAX_BLOCKS, at_the_end
    assert problems == []


async def test_a_scroll_down_in_the_frame_of_an_event_is_kept(browser: Any) -> None:
    """Scrolled up, twice its bound held, an event comes (a block above the view goes)
    and the viewer scrolls down 300 px, not to the end, before its frame is drawn: once
    drawn, the block that was at the top of the view is 300 px above where it was
    (before, the frame put it back where it was: their scroll undone, which a wheel on
    a busy session met at every frame)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "down", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "down")
            await publish_steps(agent, 1, 101)
            await expect(tail).to_have_attribute("data-last-seq", "100")
            last = await scrolled_up_at_twice_the_bound(agent, page, 100, from_end=2000)
            seq, top = await tail.evaluate(IN_VIEW)

            await tail.evaluate(HOLD_FRAMES)
            await agent.publish(AgentEvent.custom("step", {"i": "in the frame"}))
            await expect(tail).to_have_attribute("data-last-seq", str(last + 1))
            await tail.evaluate("el => { el.scrollTop += 300; }")
            await scroll_event(page)
            await page.evaluate("() => releaseFrames()")
            await next_frame(page)
            moved_to = await tail.evaluate(
                """(el, seq) => {
                  const block = el.querySelector(`:scope > .ev[data-from="${seq}"]`);
                  return block.getBoundingClientRect().top - el.getBoundingClientRect().top;
                }""",
                seq,
            )
            held_then = await held(tail)
    assert abs(moved_to - (top - 300)) <= 1, (moved_to, top)
    assert held_then[1] == 2 * MAX_BLOCKS, held_then
    assert problems == []


async def test_an_event_that_brings_the_end_up_to_the_viewer_keeps_their_place(
    browser: Any,
) -> None:
    """Scrolled up 60 px above the end, twice the bound held, the oldest block a tall
    one: a step comes, the tall block goes, and the tail, shorter, is laid out before
    the frame is drawn, with its scroll moved up to the end (a scroll event). Once
    drawn, the block at the top of the view is where it was, twice the bound still held:
    the viewer did not scroll to the end (before the scroll's direction was checked, it
    counted as one: the tail dropped to its bound and jumped to the end)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "end-up", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "end-up")
            await agent.publish(AgentEvent.token("tall " * 1900))
            await agent.publish(AgentEvent.custom("step", {"i": "after the tall block"}))
            await publish_steps(agent, 3, 101)
            await expect(tail).to_have_attribute("data-last-seq", "100")
            last = await scrolled_up_at_twice_the_bound(agent, page, 100, from_end=60)
            in_view = await tail.evaluate(IN_VIEW)
            scrolled_to = await tail.evaluate("el => el.scrollTop")

            await tail.evaluate(HOLD_FRAMES)
            await agent.publish(AgentEvent.custom("step", {"i": "in the frame"}))
            await expect(tail).to_have_attribute("data-last-seq", str(last + 1))
            await expect(tail.locator(".ev-text")).to_have_count(0)  # the tall block went
            moved_to = await tail.evaluate("el => el.scrollTop")  # laid out: moved up
            await scroll_event(page)
            assert moved_to < scrolled_to and await at_end(tail), (moved_to, scrolled_to)
            await page.evaluate("() => releaseFrames()")
            await next_frame(page)
            after = await tail.evaluate(IN_VIEW), await at_end(tail), await held(tail)
    assert after[0] == in_view, (after, in_view)
    assert not after[1]
    assert after[2][1] == 2 * MAX_BLOCKS, after
    assert problems == []


@pytest.mark.parametrize("quiet", [False, True], ids=["in-a-frame-of-events", "in-a-quiet-frame"])
async def test_a_wheel_to_the_end_that_lands_frames_late_follows_it(
    browser: Any, quiet: bool
) -> None:
    """Scrolled up, the tail growing below, the viewer turns the wheel down past the
    end, and its scroll lands where the end was then, more steps drawn since: the
    browser scrolls by the page as it last had it (with a real wheel on a session
    streaming 200 events a second, 4 scrolls to the end in 30 landed 50 to 110 px
    short). They follow the end from there, whether the scroll lands in a frame with
    events to draw or in one without (before, they stayed where it landed, a few blocks
    short, not following: only a second scroll reached the end)."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "late", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "late")
            await publish_steps(agent, 1, 101)
            await expect(tail).to_have_attribute("data-last-seq", "100")
            await tail.evaluate(
                "el => { el.scrollTop = el.scrollHeight - el.clientHeight - 2000; }"
            )
            await next_frame(page)
            end_then = await tail.evaluate("el => el.scrollHeight - el.clientHeight")
            await tail.evaluate("el => el.dispatchEvent(new WheelEvent('wheel', { deltaY: 5000 }))")
            await publish_steps(agent, 101, 105)  # drawn before the wheel's scroll lands
            await expect(tail).to_have_attribute("data-last-seq", "104")
            await next_frame(page)
            end_now = await tail.evaluate("el => el.scrollHeight - el.clientHeight")
            assert end_now - end_then > 40, (end_now, end_then)  # tail.js: END_SLACK

            if not quiet:
                await tail.evaluate(HOLD_FRAMES)
                await agent.publish(AgentEvent.custom("step", {"i": "in the frame"}))
                await expect(tail).to_have_attribute("data-last-seq", "105")
            # Where it lands, short of the end as laid out now (read in the same task).
            short_by = await tail.evaluate(
                "(el, to) => { el.scrollTop = to; return el.scrollHeight - to - el.clientHeight; }",
                end_then,
            )
            assert short_by > 40, short_by
            if not quiet:
                await scroll_event(page)
                await page.evaluate("() => releaseFrames()")
            await eventually(lambda: at_end(tail), "the viewer at the end")
            last = 105 if quiet else 106
            await agent.publish(AgentEvent.custom("step", {"i": "after"}))
            await expect(tail).to_have_attribute("data-last-seq", str(last))
            await next_frame(page)
            following = await at_end(tail)
    assert following
    assert problems == []
