"""The browser side of the browser soak (bench/browser_soak.py): Debian's headless
Chromium driven by Playwright (never a downloaded browser), its pages, and what is
read of them over CDP.

- :func:`launch` (bench/chromium.py): the browser, as the browser tests launch it.
- :func:`app_origin`: the JavaScript client page's own origin (another loopback port,
  as an application's), serving bench/browser_soak_web/.
- :class:`Watched`: one page, each in a context of its own, with the probe
  (bench/browser_soak_web/probe.js) run before its scripts, its CDP session, and
  :meth:`Watched.sample`: after a forced garbage collection, the JS heap used
  (``Runtime.getHeapUsage``: V8's, and Blink's own objects, the DOM, under
  ``embedderHeapUsedSize``), ``Performance.getMetrics`` (DOM nodes, event listeners,
  the main thread's busy seconds, from which its CPU share), the probe's counts, and how
  long a round trip into the page took (a page busy with long tasks answers late).
- :func:`chromium_cpu_seconds`: the CPU seconds of every Chromium process of the run,
  from /proc.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WEB = Path(__file__).resolve().parent / "browser_soak_web"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Seconds the page's main thread spent (Performance.getMetrics), and the sample's field
# for their share of the wall clock since the sample before, in percent: all its tasks,
# then of them, scripts, style recalculations and layouts.
BUSY = {
    "TaskDuration": "cpu_pct",
    "ScriptDuration": "script_pct",
    "RecalcStyleDuration": "style_pct",
    "LayoutDuration": "layout_pct",
}


@contextlib.contextmanager
def app_origin() -> Iterator[str]:
    """Serves bench/browser_soak_web/ on a loopback port; yields its origin."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Watched:
    """One page of the soak, sampled over CDP."""

    def __init__(self, name: str, page: Any, cdp: Any) -> None:
        self.name = name
        self.page = page
        self.cdp = cdp
        self.samples: list[dict[str, Any]] = []
        self.problems: list[str] = []  # uncaught errors, console errors
        # The wall clock and the busy seconds (BUSY) at the last sample.
        self._busy: tuple[float, dict[str, float]] | None = None

    @classmethod
    async def open(cls, browser: Any, name: str, url: str) -> Watched:
        context = await browser.new_context()
        await context.add_init_script(path=str(WEB / "probe.js"))
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        watched = cls(name, page, cdp)
        page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
        page.on("console", watched._console)
        await page.goto(url)
        return watched

    def _console(self, message: Any) -> None:
        # A refused connection (the server restarting) is the network's, not the page's.
        refused = "net::ERR_" in message.text or "before receiving a handshake" in message.text
        if message.type == "error" and not refused and len(self.problems) < 50:
            self.problems.append(f"console error: {message.text[:300]}")

    async def sample(self, elapsed: float, events: int) -> dict[str, Any]:
        """One sample (see the module's docstring); ``events``: the events the page was
        sent so far (its sessions' last seqs), against which growth is measured."""
        started = time.monotonic()
        probe = await self.page.evaluate("() => window.__soakProbe()")
        answered = time.monotonic() - started
        await self.cdp.send("HeapProfiler.collectGarbage")
        heap = await self.cdp.send("Runtime.getHeapUsage")
        metrics = {
            m["name"]: m["value"]
            for m in (await self.cdp.send("Performance.getMetrics"))["metrics"]
        }
        wall = time.monotonic()
        busy = {name: metrics.get(name, 0.0) for name in BUSY}
        shares: dict[str, float | None] = dict.fromkeys(BUSY.values())
        if self._busy is not None and wall > self._busy[0]:
            for name, field in BUSY.items():
                spent = busy[name] - self._busy[1][name]
                shares[field] = round(100 * spent / (wall - self._busy[0]), 1)
        self._busy = (wall, busy)
        sample = {
            "t": round(elapsed),
            "events": events,
            "heap_mb": round(heap["usedSize"] / 2**20, 2),
            "dom_heap_mb": round(heap.get("embedderHeapUsedSize", 0) / 2**20, 2),
            "nodes": int(metrics.get("Nodes", 0)),
            "listeners": int(metrics.get("JSEventListeners", 0)),
            **shares,
            "answer_ms": round(answered * 1000),
            **probe,
        }
        self.samples.append(sample)
        return sample

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.page.context.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def chromium_processes(root: int | None = None) -> list[int]:
    """The Chromium processes under this process (Playwright's driver starts them)."""
    pending = [os.getpid() if root is None else root]
    found = []
    while pending:
        pid = pending.pop()
        for child in _children(pid):
            pending.append(child)
            with contextlib.suppress(OSError):
                if "chrom" in (Path("/proc") / str(child) / "comm").read_text():
                    found.append(child)
    return found


def chromium_cpu_seconds(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user and system) of ``pids`` so far, and their RSS in KiB."""
    cpu, rss = 0.0, 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return cpu, rss
