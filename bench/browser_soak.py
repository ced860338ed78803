"""The browser soak: does the web console, and the JavaScript client in a page, hold up
when left open for a long time on a flaky network, as an operator leaves a console tab
open all day on busy sessions? (``python -m bench.browser_soak --minutes 20``)

One server (the JSONL store, fsync) and, in front of it, bench/chaos_proxy.py's
CuttingProxy, through which every page reaches the server. Agents
(bench/browser_soak_agents.py) publish into ``--sessions`` sessions at agent rates,
straight to the server: tokens at 20 to 50 a second, thinking, tool calls some of
which carry large arguments or results, messages. In Debian's headless Chromium
(bench/browser_soak_pages.py), each in a context of its own: the console's session
list, the console's page of each session, and an application's page that follows
every session with the JavaScript client (bench/browser_soak_web/follower.js), from
seq 0, closing its client now and then and resuming from its position.

For ``--minutes``: cuts of one or two connections, stalls (a link frozen, no byte,
FIN or RST, for 2 to 30 s) and silent partitions (frozen for good), one every 3 s to
2 min (log-uniform); and ``--restarts`` server restarts, a SIGTERM then a SIGKILL
in turn, spread over the run. Every ``SAMPLE_EVERY`` seconds, each page over CDP: the
JS heap used after a forced GC (and Blink's DOM heap), DOM nodes, event listeners, its
main thread's CPU share, the probe's pending timers and open WebSockets
(bench/browser_soak_web/probe.js), and how long it took to answer; the session list is
refreshed with a click on Apply, timed. Then the chaos stops, the agents stop, and once
the pages caught up (bounded by ``CATCH_UP``), bench/browser_soak_checks.py's checks
compare what they show with the log and the acknowledgements, and a click on each
session page must work. Prints the figures as JSON; exits 1 when a check failed, 0
with one line when no Chromium or Playwright is here. Every process it starts it
stops, by pid; everything listens on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .browser_soak_agents import Agent
from .browser_soak_checks import (
    check_acked,
    check_flat,
    check_follower,
    check_messages,
    check_tail,
    get_json,
    growth,
    projected_at_bound,
    read_log,
)
from .browser_soak_pages import (
    BUSY,
    Watched,
    app_origin,
    chromium_cpu_seconds,
    chromium_processes,
)
from .chaos_proxy import CuttingProxy
from .chromium import browser_missing, launch
from .soak_server import Server

SAMPLE_EVERY = 10.0  # seconds between two samples of the pages
CHAOS_EVERY = (3.0, 120.0)  # seconds between two faults, drawn log-uniformly
STALL = (2.0, 30.0)  # seconds a stalled link stays frozen
DOWN = (0.5, 3.0)  # seconds the server stays down at a restart
CATCH_UP = 120.0  # seconds the pages may take to catch up once the chaos stopped
CLICK_PATIENCE = 30.0  # seconds a click's effect may take (a restart may be under way)
# The last seq the console's tail shows.
SHOWN_LAST_SEQ = "() => Number(document.getElementById('tail')?.dataset.lastSeq ?? 0)"
FIELDS = (
    *("heap_mb", "dom_heap_mb", "nodes", "listeners", "timers", "sockets"),
    *("tailBlocks", "tailChars"),
)


class BrowserSoak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.server = Server(work / "data", work / "server.log", ("--durability", "fsync"))
        self.up = False
        self.proxy = CuttingProxy(self._upstream, self.rng)
        self.sessions = [f"soak-{i}" for i in range(args.sessions)]
        self.agents: list[Agent] = []
        self.pages: list[Watched] = []
        self.figures: dict[str, Any] = {"cuts": 0, "stalls": 0, "partitions": 0, "restarts": []}
        self.problems: list[str] = []
        self.browser_samples: list[dict[str, Any]] = []
        self.started = 0.0
        self.last: dict[str, int] = {}  # each session's last seq once the agents stopped
        self.timeline: list[str] = []  # the faults, as they came

    def _upstream(self) -> int:
        if not self.up:
            raise OSError("the server is down")  # the proxy refuses the connection
        return self.server.port

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(self.server.start)
        self.server.extra += ("--port", str(self.server.port))  # restarts keep the port
        self.up = True
        await self.proxy.start()
        stop = asyncio.Event()
        url = f"ws://127.0.0.1:{self.server.port}"
        self.agents = [Agent(s, url, random.Random(self.rng.random())) for s in self.sessions]
        runs = [asyncio.ensure_future(agent.run(stop)) for agent in self.agents]
        while any(not agent.acked for agent in self.agents):  # noqa: ASYNC110 - the sessions exist
            await asyncio.sleep(0.1)
        with app_origin() as origin:
            async with launch() as browser:
                try:
                    await self._open_pages(browser, origin)
                    await self._soak(stop, runs)
                finally:
                    for page in self.pages:
                        await page.close()
        return self._report()

    async def _open_pages(self, browser: Any, origin: str) -> None:
        base = f"http://127.0.0.1:{self.proxy.port}"
        self.pages.append(await Watched.open(browser, "list", f"{base}/console#/"))
        for session_id in self.sessions:
            page = await Watched.open(browser, session_id, f"{base}/console#/s/{session_id}")
            self.pages.append(page)
        follower = f"{origin}/index.html?server={base}&sessions={','.join(self.sessions)}"
        follower += f"&recycle={int(self.args.recycle * 1000)}"
        self.pages.append(await Watched.open(browser, "client", follower))

    async def _soak(self, stop: asyncio.Event, runs: Sequence[asyncio.Future[None]]) -> None:
        self.started = time.monotonic()
        deadline = self.started + self.args.minutes * 60
        sampler = asyncio.ensure_future(self._sample_every())
        try:
            await asyncio.gather(self._chaos(deadline), self._restarts(deadline))
            self.figures["chaos_seconds"] = round(time.monotonic() - self.started)
            self.problems += await self.proxy.unfrozen(patience=60)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*runs), 120)
            await self._catch_up()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await self._sample_all()
        await self._check()

    # -- chaos ----------------------------------------------------------------------------

    async def _chaos(self, deadline: float) -> None:
        low, high = CHAOS_EVERY
        while True:
            wait = low * (high / low) ** self.rng.random()
            if time.monotonic() + wait >= deadline:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return
            await asyncio.sleep(wait)
            roll = self.rng.random()
            if roll < 0.5:
                kind, hit = "cuts", self.proxy.cut(self.rng.randint(1, 2))
            elif roll < 0.75:
                kind, hit = "stalls", self.proxy.freeze(1, held=False, thaw_after=STALL)
            else:
                kind, hit = "partitions", self.proxy.freeze(1, held=True)
            self.figures[kind] += hit
            self._note(f"{kind}: {hit}")

    async def _restarts(self, deadline: float) -> None:
        count = self.args.restarts
        for i in range(count):
            at = self.started + (deadline - self.started) * (i + 1) / (count + 1)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            kind = "sigterm" if i % 2 == 0 else "sigkill"
            self.up = False
            if kind == "sigterm":
                status = await asyncio.to_thread(self.server.stop)
                if status != 0:
                    self.problems.append(f"the server exited {status} on SIGTERM")
            else:
                await asyncio.to_thread(self.server.kill)
            await asyncio.sleep(self.rng.uniform(*DOWN))
            await asyncio.to_thread(self.server.start)
            self.up = True
            self.figures["restarts"].append(f"{kind} at {round(at - self.started)} s")
            self._note(f"{kind} restart, down {time.monotonic() - at:.1f} s")

    def _note(self, what: str) -> None:
        """A line of the run's timeline, at its second."""
        self.timeline.append(f"{time.monotonic() - self.started:.0f} s: {what}")

    # -- samples --------------------------------------------------------------------------

    def _events(self, page: Watched) -> int:
        """Events the page was sent so far: its session's, or every session's."""
        acked = {a.session_id: max(a.acked, default=0) for a in self.agents}
        return acked.get(page.name, sum(acked.values()))

    async def _sample_every(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            await self._sample_all()

    async def _sample_all(self) -> None:
        elapsed = time.monotonic() - self.started
        for page in self.pages:
            try:
                await asyncio.wait_for(page.sample(elapsed, self._events(page)), 60)
            except Exception as exc:
                self.problems.append(f"{page.name}: no sample at {elapsed:.0f} s ({exc!r})")
        await self._refresh_list()
        cpu, rss = chromium_cpu_seconds(chromium_processes())
        self.browser_samples.append(
            {
                "t": round(elapsed),
                "cpu_s": round(cpu, 1),
                "rss_mb": rss // 1024,
                "proxy_links": len(self.proxy.links | self.proxy.frozen),
            }
        )

    async def _refresh_list(self) -> None:
        """A click on the list's Apply, timed until its table is drawn again."""
        page = self.pages[0]
        started = time.monotonic()
        try:
            await page.page.click("#filters button[type=submit]", timeout=CLICK_PATIENCE * 1000)
            # The table, or the notice that the list could not be read (the server down).
            # A locator, not wait_for_selector: its handle would keep each table alive.
            drawn = page.page.locator("#sessions, #results .notice-error")
            await drawn.wait_for(timeout=CLICK_PATIENCE * 1000)
            page.samples[-1]["click_ms"] = round((time.monotonic() - started) * 1000)
            if not await page.page.locator("#sessions").count():
                self.figures["list_not_read"] = self.figures.get("list_not_read", 0) + 1
        except Exception as exc:
            self.problems.append(
                f"list: Apply drew neither a table nor a notice within {CLICK_PATIENCE:.0f} s"
                f" at {time.monotonic() - self.started:.0f} s ({type(exc).__name__})"
            )

    # -- the end --------------------------------------------------------------------------

    async def _catch_up(self) -> None:
        """Waits until every page shows each session's last seq (CATCH_UP at most)."""
        for s in self.sessions:
            answer = await asyncio.to_thread(
                get_json, self.server.port, f"/api/v1/sessions/{s}?limit=1"
            )
            self.last[s] = answer["metadata"]["last_seq"]
        deadline = time.monotonic() + CATCH_UP
        started = time.monotonic()
        while True:
            behind = await self._behind()
            if not behind:
                self.figures["catch_up_s"] = round(time.monotonic() - started, 1)
                return
            if time.monotonic() > deadline:
                self.problems.append(f"not caught up {CATCH_UP:.0f} s after the chaos: {behind}")
                return
            await asyncio.sleep(0.5)

    async def _behind(self) -> list[str]:
        behind = []
        for page in self.pages[1:-1]:
            shown = await page.page.evaluate(SHOWN_LAST_SEQ)
            if shown != self.last[page.name]:
                behind.append(f"{page.name} at #{shown} of #{self.last[page.name]}")
        followers = await self.pages[-1].page.evaluate("() => window.followers ?? {}")
        for s in self.sessions:
            last = followers.get(s, {}).get("last", 0)
            if last != self.last[s]:
                behind.append(f"client {s} at #{last} of #{self.last[s]}")
        return behind

    async def _check(self) -> None:
        port = self.server.port
        followers = await self.pages[-1].page.evaluate("() => window.followers")
        self.figures["followers"] = followers
        for agent, page in zip(self.agents, self.pages[1:-1], strict=True):
            s = agent.session_id
            log = await asyncio.to_thread(read_log, port, s)
            stored = await asyncio.to_thread(get_json, port, f"/api/v1/sessions/{s}")
            shown = await page.page.evaluate("() => window.__soakShown()")
            self.problems += check_acked(s, agent.acked, log)
            self.problems += check_tail(f"console {s}", shown, log)
            messages = [m["content"] for m in stored["messages"]]
            self.problems += check_messages(f"console {s}", shown["messages"], messages)
            self.problems += check_follower(f"client {s}", followers[s], log)
            notes = [b["text"] for b in shown["blocks"] if b["kind"] == "ev-note"]
            self.figures[s] = {
                "events": len(log),
                "large_tool_calls": agent.large,
                "agent_reconnects": agent.reconnects,
                "console_reconnects": shown["reconnects"],
                "console_notes": len(notes),
                "console_last_note": notes[-1] if notes else None,
            }
            await self._click(page)
        for page in self.pages:
            self.problems += [f"{page.name}: {p}" for p in page.problems]
            self.problems += check_flat(page.name, page.samples)

    async def _click(self, page: Watched) -> None:
        """The session page answers a click: "Close session…" shows its confirmation,
        a second click hides it again."""
        confirm = page.page.locator("#confirm-close")
        try:
            started = time.monotonic()
            await page.page.click("#close-session", timeout=CLICK_PATIENCE * 1000)
            await confirm.wait_for(state="visible", timeout=CLICK_PATIENCE * 1000)
            await page.page.click("#close-session", timeout=CLICK_PATIENCE * 1000)
            await confirm.wait_for(state="hidden", timeout=CLICK_PATIENCE * 1000)
            self.figures[page.name]["clicks_ms"] = round((time.monotonic() - started) * 1000)
        except Exception as exc:
            self.problems.append(f"console {page.name}: a click did not work ({exc!r})")

    def _report(self) -> dict[str, Any]:
        pages = {}
        for page in self.pages:
            summary: dict[str, Any] = {}
            for field in FIELDS:
                early, late, per_k = growth(page.samples, field)
                summary[field] = {"after_warmup": early, "end": late, "per_1000_events": per_k}
            for field in BUSY.values():  # the main thread's busy shares, on average
                shares = [s[field] for s in page.samples if s.get(field) is not None]
                summary[f"{field}_mean"] = round(sum(shares) / len(shares), 1) if shares else None
            summary["answer_ms_max"] = max((s["answer_ms"] for s in page.samples), default=None)
            clicks = [s["click_ms"] for s in page.samples if "click_ms" in s]
            if clicks:
                summary["click_ms_max"] = max(clicks)
            projected = projected_at_bound(page.samples[-1] if page.samples else {})
            if projected is not None:
                summary["projected_at_bound"] = projected
            pages[page.name] = summary
        self.figures["pages"] = pages
        self.figures["browser"] = self.browser_samples[:: max(1, len(self.browser_samples) // 12)]
        self.figures["samples"] = {p.name: p.samples for p in self.pages}
        self.figures["timeline"] = self.timeline
        return {"figures": self.figures, "problems": self.problems}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="browser-soak-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runner = BrowserSoak(args, work)
        try:
            return await runner.run()
        finally:
            await runner.proxy.close()
            if runner.server.proc is not None and runner.server.proc.poll() is None:
                status = runner.server.stop()
                if status != 0:
                    runner.problems.append(f"the server exited {status} on SIGTERM")
            for pid in chromium_processes():  # Playwright stops them; one left is killed
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="of chaos")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=2, help="SIGTERM, SIGKILL, in turn")
    parser.add_argument("--recycle", type=float, default=120.0, help="s between client resumes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--work", default=None, help="keep the files here (default: a temp dir)")
    parser.add_argument("--samples", action="store_true", help="print every sample too")
    args = parser.parse_args()
    missing = browser_missing()
    if missing is not None:
        print(f"browser soak skipped: {missing}")
        return 0
    result = asyncio.run(soak(args))
    if not args.samples:
        result["figures"].pop("samples")
    print(json.dumps(result, indent=1))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
