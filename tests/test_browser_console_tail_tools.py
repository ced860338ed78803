"""Tool calls across the console tail's bound, in a real headless Chromium: the blocks
"Show earlier" brings back pair a tool call with its completion as if nothing had been
dropped, whichever of the two the tail still held: a completion shown on its own
(its call's block dropped while running), one that went with its call's block while
events between them stayed, and one that comes live after the call was brought back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.models import ToolResult
from tests.browser import eventually
from tests.console_support import DASH, ws_url
from tests.support import run_server
from tests.tail_support import MAX_BLOCKS, READ_DONE, next_frame, open_tail, show_earlier_until_all

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=20_000)

# Each tool block of the tail: [first seq, its tool call id, its status, its summary's
# status text, its text after the summary].
TOOLS = """el => [...el.querySelectorAll(":scope > .ev-tool")].map(b => [
  Number(b.dataset.from), b.dataset.tool, b.dataset.status,
  b.querySelector("summary .status").textContent,
  [...b.children].filter(c => c.tagName !== "SUMMARY").map(c => c.textContent).join("|"),
])"""


async def test_show_earlier_pairs_tool_calls_with_their_completions(browser: Any) -> None:
    """Three tool calls at #1-#3, then a step, call b's result (#5, into its block), and
    steps up to #304: the tail (MAX_BLOCKS) drops the calls' blocks, b's result with
    its block while the step #4 stays; then a's result (#305) comes, on its own, and
    #4 goes. "Show earlier" brings #1-#4 back: a completed by #305 (whose block of its
    own goes), b by #5, c still running; c's result (#306) then completes it. Before,
    a and b showed as running after "Show earlier", and #305 and #306 as blocks of
    their own."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "tools", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "tools")
            for call in ("a", "c", "b"):
                await agent.publish(AgentEvent.tool_start(f"call-{call}", f"tool_{call}", {}))
            await agent.publish(AgentEvent.custom("step", {"i": 4}))
            await agent.publish(AgentEvent.tool_complete("call-b", ToolResult(True, "b's")))
            steps = range(6, MAX_BLOCKS + 5)  # #6-#304: blocks past the bound by 3
            await asyncio.gather(*(agent.publish(AgentEvent.custom("s", {"i": i})) for i in steps))
            await expect(tail).to_have_attribute("data-last-seq", str(MAX_BLOCKS + 4))
            await expect(page.locator("#tail-earlier")).to_contain_text(f"Events 1{DASH}3 ")
            await agent.publish(AgentEvent.tool_complete("call-a", ToolResult(True, "a's")))
            await expect(tail).to_have_attribute("data-last-seq", str(MAX_BLOCKS + 5))
            await expect(page.locator("#tail-earlier")).to_contain_text(f"Events 1{DASH}4 ")
            on_its_own = [[305, "call-a", "done", "done", "result|a's"]]
            assert await tail.evaluate(TOOLS) == on_its_own

            await tail.evaluate("el => { el.scrollTop = 0; }")  # up, to "Show earlier"
            await next_frame(page)
            assert await show_earlier_until_all(page) == 1
            assert await tail.evaluate(TOOLS) == [
                [1, "call-a", "done", "done (#305)", "arguments|{}|result|a's"],
                [2, "call-c", "running", "running…", "arguments|{}"],
                [3, "call-b", "done", "done (#5)", "arguments|{}|result|b's"],
            ]
            await agent.publish(AgentEvent.tool_error("call-c", "c failed"))
            await expect(tail).to_have_attribute("data-last-seq", str(MAX_BLOCKS + 6))
            await expect(tail.locator(".ev-tool")).to_have_count(3)
            assert (await tail.evaluate(TOOLS))[1] == [
                2,
                "call-c",
                "failed",
                "failed (#306)",
                "arguments|{}|error|c failed",
            ]
            seqs = await tail.evaluate(
                "el => [...el.querySelectorAll(':scope > .ev')].map(b => Number(b.dataset.from))"
            )
    assert seqs == [1, 2, 3, 4, *range(6, MAX_BLOCKS + 5)]  # #5, #305, #306: in the calls'
    assert problems == []


async def test_a_call_show_earlier_leaves_out_keeps_its_result(browser: Any) -> None:
    """Call x (#1), a step (#2), x's result (#3, 9,500 characters, into x's block), and
    steps of 9,000 characters up to #112: the tail (MAX_TAIL_CHARS) keeps #58-#112.
    "Show earlier" reads #1-#57 and has room for its steps but not for x's block with
    its result: it leaves it out, and says event 1 is not shown. The next one reads #1
    again: x with its result, which still does not fit. Before, the page left out took
    x's result with it: the next read brought x back alone, running for good, and the
    tail said it showed every event, #3 among them."""
    async with run_server() as server:
        connect = BambooClient.connect(ws_url(server), "tool-left", create=True, role="agent")
        async with await connect as agent:
            page, problems, tail = await open_tail(browser, server.port, "tool-left")
            big = {"t": "s" * 9_000}
            await agent.publish(AgentEvent.tool_start("call-x", "tool_x", {}))
            await agent.publish(AgentEvent.custom("step", big))
            result = ToolResult(True, "r" * 9_500)
            await agent.publish(AgentEvent.tool_complete("call-x", result))
            for _ in range(4, 113):
                await agent.publish(AgentEvent.custom("step", big))
            header = page.locator("#tail-earlier")
            await expect(tail).to_have_attribute("data-last-seq", "112")
            await expect(header).to_contain_text(f"Events 1{DASH}57 not shown")

            await tail.evaluate("el => { el.scrollTop = 0; }")  # up, to "Show earlier"
            await next_frame(page)
            for _ in range(2):
                await header.get_by_role("button", name="Show earlier").evaluate("b => b.click()")
                await eventually(lambda: page.evaluate(READ_DONE), "the read of earlier events")
                await next_frame(page)
                assert await tail.evaluate(TOOLS) == []
                await expect(header).to_contain_text("Event 1 not shown")
            await expect(header).to_contain_text("the tail holds no more")
    assert problems == []
