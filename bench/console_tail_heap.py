"""What does the console's tail hold with its viewer scrolled up, and how large does its
map of tool results grow, on a long stream of tool calls? (``python -m
bench.console_tail_heap``)

server/web/console/tail.js keeps twice its bound (``MAX_TAIL_CHARS`` characters,
``MAX_BLOCKS`` blocks) while its viewer is scrolled up, and its ``results`` map (a tool
call whose block left the tail with its result in it, to that result's seq, which "Show
earlier" reads with the call) was said to hold at most the blocks the tail holds and a
page (``EARLIER_PAGE``): argued, not measured. This script feeds tail.js's own ``Tail``,
in a console page of a real server in Debian's headless Chromium, ``--events`` events
of one shape, its viewer at the end (``end``) or scrolled up (``up``: to the top once
the tail is three views long, the tail then keeping its place); then, scrolled up,
``--rounds`` rounds of: "Show earlier" until the tail holds no more (3 at most), back
to the end (the tail drops to its bound), up again, and a last "Show earlier". Its
reads are answered in the page, from the same shape (no HTTP: what is measured is
what the tail holds). Shapes:

- ``stream``: tokens of 8 characters (blocks of 10,000 characters): the character
  bound.
- ``tools-K``: K tool calls started, then their K results in order (each 300
  characters, into its call's block while that is still shown), again and again: the
  block bound; K calls in flight at most.

Each row: the blocks and characters held, the map's size at the end and its most over
the whole run (checked every 50 events and after each step of a round), how many reads
"Show earlier" made (one a page, and one a result the map names), and, after a forced
GC, the page's DOM nodes, its JS heap and Blink's (``Runtime.getHeapUsage``:
``embedderHeapUsedSize``, the DOM and its layout). Prints JSON rows.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .chromium import console_page, run_if_browser, served_to_chromium

SHAPES = ("stream", "tools-50", "tools-290", "tools-590", "tools-2000")

SETUP = """async (shape) => {
  const { Tail, MAX_BLOCKS } = await import("/console/tail.js");
  const { readInto } = await import("/console/earlier.js");
  const el = document.createElement("div");
  el.id = "tail";
  el.className = "tail";
  document.getElementById("main").replaceChildren(el);
  const arg = { q: "a".repeat(100) };
  const content = "r".repeat(300);
  const inFlight = shape.startsWith("tools-") ? Number(shape.slice(6)) : 0;
  const event = (seq) => {
    if (inFlight === 0) return { type: "token", content: "xxxxxxx " };
    const at = (seq - 1) % (2 * inFlight);
    const batch = Math.floor((seq - 1) / (2 * inFlight));
    if (at < inFlight) {
      const id = `c${batch}-${at}`;
      return { type: "tool_start", tool_call_id: id, tool_name: "lookup", arguments: arg };
    }
    const id = `c${batch}-${at - inFlight}`;
    return { type: "tool_complete", tool_call_id: id, result: { success: true, content } };
  };
  const tail = new Tail(el);
  const state = { tail, el, seq: 0, most: 0, reads: 0 };
  tail.read = async (after, upTo) => {
    state.reads += 1;
    const items = [];
    for (let seq = after + 1; seq <= upTo; seq++) items.push({ seq, ts: "", event: event(seq) });
    return items;
  };
  const frame = () => new Promise((r) => requestAnimationFrame(r));
  state.look = () => { state.most = Math.max(state.most, tail.results.size); };
  state.feed = async (count) => {
    for (let i = 0; i < count; i++) {
      tail.add({ seq: ++state.seq, ts: "", event: event(state.seq) });
      if (i % 50 === 49) { state.look(); await frame(); }
    }
    state.look();
    await frame();
  };
  state.fillView = async () => {
    while (el.clientHeight === 0 || el.scrollHeight < 3 * el.clientHeight) await state.feed(50);
    return state.seq;
  };
  state.up = async () => { el.scrollTop = 0; await frame(); };
  state.down = async () => {
    el.scrollTop = el.scrollHeight; // (its scroll event trims the tail to its bound)
    await frame(); await frame();
    state.look();
  };
  state.earlier = async () => {
    for (let i = 0; i < 3 && tail.header !== null; i++) {
      await readInto(tail, tail.head);
      state.look();
      await frame();
      if (tail.header?.textContent.includes("holds no more")) break;
    }
  };
  state.row = () => ({
    blocks: tail.count,
    chars: tail.chars,
    hidden: tail.hidden,
    results: tail.results.size,
    results_most: state.most,
    reads: state.reads,
    following: tail.following,
    bound_blocks: MAX_BLOCKS,
  });
  window.__tail = state;
}"""


async def measure(
    browser: Any, port: int, shape: str, view: str, args: argparse.Namespace
) -> dict[str, Any]:
    async with console_page(browser, port) as (page, cdp):
        await page.evaluate(SETUP, shape)
        events = args.events if shape != "stream" else args.tokens
        fed = await page.evaluate("() => window.__tail.fillView()")  # (so that it scrolls)
        if view == "up":
            await page.evaluate("() => window.__tail.up()")
        await page.evaluate("n => window.__tail.feed(n)", events - fed)
        held = await heap_row(page, cdp)
        row: dict[str, Any] = {"shape": shape, "view": view, "events": events, **held}
        if view == "up" and args.rounds > 0:
            for _ in range(args.rounds):
                await page.evaluate("() => window.__tail.earlier()")
                await page.evaluate("() => window.__tail.down()")
                await page.evaluate("() => window.__tail.up()")
            await page.evaluate("() => window.__tail.earlier()")
            after = await heap_row(page, cdp)
            row["after_rounds"] = {k: after[k] for k in ("blocks", "chars", "results", "reads")}
            row["results_most"] = after["results_most"]
            row["after_rounds"]["dom_heap_mb"] = after["dom_heap_mb"]
        print(json.dumps(row), flush=True)
        return row


async def heap_row(page: Any, cdp: Any) -> dict[str, Any]:
    """The tail's figures, then the page's after a forced GC."""
    state = await page.evaluate("() => window.__tail.row()")
    await cdp.send("HeapProfiler.collectGarbage")
    heap = await cdp.send("Runtime.getHeapUsage")
    metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
    return {
        **state,
        "nodes": int(metrics["Nodes"]),
        "heap_mb": round(heap["usedSize"] / 2**20, 1),
        "dom_heap_mb": round(heap.get("embedderHeapUsedSize", 0) / 2**20, 1),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with served_to_chromium("console-heap-") as (server, browser):
        rows = []
        for shape in args.shapes.split(","):
            for view in args.views.split(","):
                rows.append(await measure(browser, server.port, shape, view, args))
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--views", default="end,up")
    parser.add_argument("--events", type=int, default=20_000, help="of a tools shape")
    parser.add_argument("--tokens", type=int, default=250_000, help="of the stream shape")
    parser.add_argument("--rounds", type=int, default=5, help="of Show earlier, scrolled up")
    args = parser.parse_args()
    return run_if_browser("console tail heap", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
