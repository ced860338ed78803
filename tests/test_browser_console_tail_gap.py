"""The gap a catch-up leaves in the middle of the console's tail, in a real headless
Chromium: when the session ended while the page was behind and more events were missed
than the tail shows, the line saying which are not shown ("Events 6-N are not shown")
reads them in with "Show them", as "Show earlier" does the tail's first ones: in order,
each once, tool calls paired with their results wherever the two are (both in the gap,
the call above it, the result below it); the line shrinks as they come, within what a
tail scrolled up keeps, and goes once all have; dropped by a trim, its events are the
first line's.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import ToolResult
from tests.browser import eventually
from tests.console_missed_support import closed_while_the_page_is_away
from tests.console_support import DASH
from tests.tail_support import MAX_BLOCKS, next_frame, show_earlier_until_all

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=20_000)

# Each block of an event in the tail: [first seq, last seq, the seq of the result it
# holds (0: none), its tool call id ("" none), its status ("" none), a result alone].
BLOCKS = """el => [...el.querySelectorAll(":scope > .ev[data-from]")].map(b => [
  Number(b.dataset.from), Number(b.dataset.to ?? b.dataset.from), Number(b.dataset.result ?? 0),
  b.dataset.tool ?? "", b.dataset.status ?? "", b.dataset.kind === "result",
])"""
# The tail's lines (not its events' blocks), in order.
LINES = """el => [...el.children].filter(c => c.dataset.from === undefined)
  .map(c => c.textContent)"""
# The tail's children in order: a block's first seq, a line's text.
CHILDREN = """el => [...el.children].map(
  c => c.dataset.from === undefined ? c.textContent : Number(c.dataset.from))"""
GAP_DONE = """() => {
  const gap = document.querySelector("#tail .tail-gap");
  return gap === null || !gap.textContent.includes("reading");
}"""


def away_with_tools(count: int) -> Any:
    """Events published while the page is away (from #41): steps, with call-up's result
    (its call shown before the page was cut off) at #42, call-in at #43 with its error at
    #45, and call-down at #46 with its result at ``count + 39``, after the gap."""
    tools = {
        1: AgentEvent.tool_complete("call-up", ToolResult(True, "up's")),
        2: AgentEvent.tool_start("call-in", "tool_in", {"q": "in"}),
        4: AgentEvent.tool_error("call-in", "in failed"),
        5: AgentEvent.tool_start("call-down", "tool_down", {"q": "down"}),
        count - 2: AgentEvent.tool_complete("call-down", ToolResult(True, "down's")),
    }
    return lambda i: tools.get(i, AgentEvent.custom("away", {"i": i}))


# What the page shows before it is cut off: 40 events, call-up running at #2.
FIRST = (
    AgentEvent.token("a0 "),
    AgentEvent.tool_start("call-up", "tool_up", {"q": "up"}),
    *(AgentEvent.custom("before", {"i": i}) for i in range(3, 41)),
)


async def scroll_up(page: Any) -> None:
    """The viewer scrolls the tail up, to read: it then keeps twice its bound."""
    await page.locator("#tail").evaluate("el => { el.scrollTop = 0; }")
    await next_frame(page)


async def test_show_them_fills_the_gap_in_order_once_with_calls_paired(browser: Any) -> None:
    """The viewer is scrolled up, reading the first 40 events (call-up at #2, running),
    when 350 events are missed, more than the tail's 298: the catch-up shows the
    newest, after "Events 41-N are not shown", call-down's result alone below it.
    "Show them" reads #41-#N in under the line, which goes: every event from #1 to the
    last is shown once, in order; call-up holds its result (#42, read in the gap),
    call-in its error (both in the gap), call-down its result (which was alone below);
    no result is left alone. Before, the line only named the GET address that has them."""
    count = 350
    async with closed_while_the_page_is_away(
        browser, "gap-all", False, count, away_with_tools(count), first=FIRST, while_away=scroll_up
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        gap = tail.locator(".tail-gap")
        left_out = last_seq - 298
        await expect(gap).to_contain_text(f"Events 41{DASH}{left_out} are not shown")
        before = await tail.evaluate(BLOCKS)
        assert [b for b in before if b[3] == "call-up"] == [[2, 2, 0, "call-up", "running", False]]
        assert [b[:2] for b in before if b[5]] == [[count + 39, count + 39]]  # call-down's result

        await gap.get_by_role("button", name="Show them").click()  # (scrolls to it, as a viewer)
        await eventually(lambda: page.evaluate(GAP_DONE), "the read of the gap's events")
        await expect(gap).to_have_count(0)
        await next_frame(page)
        blocks = await tail.evaluate(BLOCKS)
        await expect(page.locator("#tail-earlier")).to_have_count(0)
    seqs = [s for f, t, r, *_ in blocks for s in (*range(f, t + 1), *([r] if r else []))]
    assert sorted(seqs) == list(range(1, last_seq + 1)), "each event once"
    assert [b[0] for b in blocks] == sorted({b[0] for b in blocks}), "in order"
    tools = {b[3]: b[:5] for b in blocks if b[3]}
    assert tools == {
        "call-up": [2, 2, 42, "call-up", "done"],
        "call-in": [43, 43, 45, "call-in", "failed"],
        "call-down": [46, 46, count + 39, "call-down", "done"],
        "call-9": [count + 42, count + 42, count + 43, "call-9", "done"],
    }
    assert not any(b[5] for b in blocks), "no result left alone"
    assert problems == []


async def test_a_gap_larger_than_the_room_shrinks_then_goes_to_the_first_line(
    browser: Any,
) -> None:
    """1,200 steps missed while the viewer is scrolled up, reading the first 40 events
    (which the tail then keeps, so the gap stands between them and the newest; a tail
    at its end would drop them and say the run from #1 to the gap's last in its first
    line: test_one_line_says_a_run_of_events_not_shown_across_a_reconnect): the gap
    (#41 to about #946) is more than a tail scrolled up has room for. "Show them" reads
    in its newest that fit (up to twice MAX_BLOCKS in all), the line now saying "Events
    41-K" with #K+1 the block right after it; the next says the tail holds no more. Back
    at the end, the tail drops to its bound, the line with the oldest blocks, and its
    first line says those events are not shown."""
    async with closed_while_the_page_is_away(
        browser,
        "gap-part",
        False,
        1200,
        lambda i: AgentEvent.custom("away", {"i": i}),
        first=FIRST,
        while_away=scroll_up,
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        gap = tail.locator(".tail-gap")
        await expect(gap).to_contain_text(f"Events 41{DASH}{last_seq - 298} are not shown")

        await gap.get_by_role("button", name="Show them").click()
        await eventually(lambda: page.evaluate(GAP_DONE), "the read of the gap's events")
        text = await gap.text_content()
        assert text is not None
        top = int(text.split(DASH)[1].split(" ")[0])
        assert 41 < top < last_seq - 298, text
        after_gap = await gap.evaluate("g => Number(g.nextElementSibling.dataset.from)")
        assert after_gap == top + 1
        count = await tail.evaluate("el => el.querySelectorAll(':scope > .ev').length")
        assert MAX_BLOCKS < count <= 2 * MAX_BLOCKS
        blocks = await tail.evaluate(BLOCKS)
        below = [b[0] for b in blocks if b[0] > top]
        assert below[: last_seq - 298 - top] == list(range(top + 1, last_seq - 297))

        await gap.get_by_role("button", name="Show them").click()
        await expect(gap).to_contain_text("the tail holds no more")

        await tail.evaluate("el => { el.scrollTop = el.scrollHeight; }")  # back at the end
        await expect(gap).to_have_count(0)
        first = await tail.evaluate(BLOCKS)
        await expect(page.locator("#tail-earlier")).to_contain_text(
            f"Events 1{DASH}{first[0][0] - 1} not shown"
        )
    assert first[0][0] - 1 >= top  # (the gap's events among them)
    assert problems == []


def away_then_two_tokens(count: int) -> Any:
    """Steps published while the page is away, the last two of them tokens (one block)."""
    return lambda i: (
        AgentEvent.token(f"t{i} ") if i >= count - 2 else AgentEvent.custom("away", {"i": i})
    )


async def test_one_line_says_a_run_of_events_not_shown_across_a_reconnect(browser: Any) -> None:
    """The page shows #1-#5 (one block of tokens) and is disconnected while 400 more
    events come and the session closes: the catch-up shows the newest 298 after the line
    saying which are not shown, and the tail, past its bound by one block, drops its
    oldest (#1-#5). Before, the tail then said "Events 1-5 not shown · Show earlier",
    "Disconnected after #5", "Events 6-K are not shown (…) · Show them": two lines for
    one run of events, split by the note. Now one line says the run, the note below it;
    "Show earlier" shows every event once, in order, the note in its place between #5
    and #6."""
    count = 400
    async with closed_while_the_page_is_away(
        browser, "gap-joined", False, count, away_then_two_tokens(count)
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        left_out = last_seq - 298
        disconnected = (
            "Disconnected after #5 (connection lost): reconnecting\N{HORIZONTAL ELLIPSIS}"
        )
        assert await tail.evaluate(LINES) == [
            f"Events 1{DASH}{left_out} not shown \u00b7 Show earlier",
            disconnected,
            "Connection ended: 4409 session closed.",
            "Session closed: session closed",
        ]
        await expect(tail.locator(".tail-gap")).to_have_count(0)
        first = await tail.evaluate(
            "el => Number(el.querySelector(':scope > [data-from]').dataset.from)"
        )
        assert first == left_out + 1
        held = await tail.evaluate("el => el.querySelectorAll(':scope > .ev').length")
        assert held <= MAX_BLOCKS  # (the first line is not among them, nor counted)

        await scroll_up(page)  # to "Show earlier" (at the end, the tail keeps its bound)
        await show_earlier_until_all(page)
        blocks = await tail.evaluate(BLOCKS)
        children = await tail.evaluate(CHILDREN)
    seqs = [s for f, t, r, *_ in blocks for s in (*range(f, t + 1), *([r] if r else []))]
    assert seqs == list(range(1, last_seq + 1)), "each event once, in order"
    at = children.index(disconnected)
    assert children[at - 1 : at + 2] == [1, disconnected, 6]  # after #1-#5, before #6
    assert problems == []
