"""What does the console's live tail cost once a page has been left open for hours,
and does it stay bounded? (``python -m bench.console_tail_cost``)

bench/browser_soak.py runs minutes, at agent rates: a tail fills its bound
(``MAX_TAIL_CHARS`` characters or ``MAX_BLOCKS`` blocks of up to 10,000 characters,
whichever comes first, server/web/console/tail.js) only after an hour or more. This
script fills one at once, in a console page of a real server in
Debian's headless Chromium: tail.js's own ``Tail``, fed tokens as the live path feeds
them, in two shapes of stream:

- ``stream``: tokens of 8 characters and nothing else, as an agent writing a long
  answer: every block fills to its 10,000 characters (1,250 tokens).
- ``agent``: 150 tokens, then a line (a ``complete``), as the soak's agents: blocks of
  1,200 characters.

At each checkpoint (blocks held), after a forced GC: DOM nodes, the JS heap and Blink's
heap (``Runtime.getHeapUsage``: ``embedderHeapUsedSize``, the DOM and its layout), the
characters shown; then a live stream of ``--rate`` tokens a second for ``--seconds``, as
a page watching an agent gets them, each laid out and painted in the frames that follow:
the share of a core the page's main thread was busy (``cpu_pct``; of it, layout), and
whether the tail still followed the end (``end_px``, its distance from the end: 0).
``--css`` adds a stylesheet to try (``content-visibility``, say). Prints JSON rows. The
machine is shared: the times are for comparing rows of one invocation.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .chromium import console_page, run_if_browser, served_to_chromium

CHECKPOINTS = (10, 100, 250, 500, 1000)
SHAPES = {"stream": (1250, False), "agent": (150, True)}  # tokens a block, a line after it

FILL = """async ({ upTo, perBlock, line }) => {
  const state = window.__tail;
  while (state.blocks < upTo) {
    for (let i = 0; i < perBlock; i++) state.token();
    if (line) state.tail.add({ seq: ++state.seq, ts: "", event: { type: "complete" } });
    state.blocks += 1;
    if (state.blocks % 50 === 0) await new Promise((r) => requestAnimationFrame(r));
  }
  await new Promise((r) => requestAnimationFrame(r));
}"""

# A live stream: a token every 1000 / rate ms for `ms`, as the page gets them, each
# laid out and painted in the frames that follow; then how far from its end the tail
# is scrolled (0: it followed the stream).
LIVE = """async ({ rate, ms }) => {
  const state = window.__tail;
  const timer = setInterval(() => state.token(), 1000 / rate);
  await new Promise((r) => setTimeout(r, ms));
  clearInterval(timer);
  await new Promise((r) => setTimeout(r, 500));
  const el = state.el;
  return {
    blocks_shown: el.childElementCount,
    chars: el.textContent.length,
    end_px: Math.round(el.scrollHeight - el.scrollTop - el.clientHeight),
  };
}"""

SETUP = """async (css) => {
  const { Tail } = await import("/console/tail.js");
  const el = document.createElement("div");
  el.id = "tail";
  el.className = "tail";
  document.getElementById("main").replaceChildren(el);
  if (css) {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(css);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  }
  const state = { tail: new Tail(el), el, seq: 0, blocks: 0 };
  state.token = () =>
    state.tail.add({ seq: ++state.seq, ts: "", event: { type: "token", content: "xxxxxxx " } });
  window.__tail = state;
}"""


async def busy(cdp: Any) -> dict[str, float]:
    metrics = (await cdp.send("Performance.getMetrics"))["metrics"]
    return {m["name"]: m["value"] for m in metrics}


async def measure(
    browser: Any, port: int, shape: str, checkpoints: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    per_block, line = SHAPES[shape]
    async with console_page(browser, port) as (page, cdp):
        await page.evaluate(SETUP, args.css)
        rows = []
        for blocks in checkpoints:
            await page.evaluate(FILL, {"upTo": blocks, "perBlock": per_block, "line": line})
            await cdp.send("HeapProfiler.collectGarbage")
            heap = await cdp.send("Runtime.getHeapUsage")
            before = await busy(cdp)
            live = await page.evaluate(LIVE, {"rate": args.rate, "ms": args.seconds * 1000})
            after = await busy(cdp)
            wall = args.seconds + 0.5
            rows.append(
                {
                    "shape": shape,
                    "blocks_added": blocks,
                    **live,
                    "nodes": int(after["Nodes"]),
                    "heap_mb": round(heap["usedSize"] / 2**20, 1),
                    "dom_heap_mb": round(heap.get("embedderHeapUsedSize", 0) / 2**20, 1),
                    "cpu_pct": round(
                        100 * (after["TaskDuration"] - before["TaskDuration"]) / wall, 1
                    ),
                    "layout_pct": round(
                        100 * (after["LayoutDuration"] - before["LayoutDuration"]) / wall, 1
                    ),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        return rows


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    async with served_to_chromium("console-tail-") as (server, browser):
        rows = []
        for shape in args.shapes.split(","):
            rows += await measure(browser, server.port, shape, checkpoints, args)
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rate", type=float, default=20.0, help="live tokens a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="of live stream")
    parser.add_argument("--css", default="", help="a stylesheet added to the page, to try")
    args = parser.parse_args()
    return run_if_browser("console tail cost", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
