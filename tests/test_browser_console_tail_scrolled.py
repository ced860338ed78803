"""The console's tail while its viewer is scrolled up through a long stream, in a real
headless Chromium: it keeps more than its bound then (so that what they read stays),
never more than twice it, in characters and in blocks, at any moment the page could
be seen; a viewer whose block goes sees the one that followed it; and once the viewer
is back at the end it holds its bound again, without waiting for the next event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import eventually, watch_page
from tests.console_support import console_url, ws_url
from tests.support import run_server
from tests.tail_support import (
    BLOCKS,
    IN_VIEW,
    MAX_BLOCKS,
    MAX_TAIL_CHARS,
    at_end,
    next_frame,
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
            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(server.port, "#/s/reading"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
            tail = page.locator("#tail")
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
            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(server.port, "#/s/passed"))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")

            await publish_steps(agent, 1, MAX_BLOCKS + 11)
            tail = page.locator("#tail")
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
