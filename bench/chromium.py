"""The browser the browser tests and the browser benches drive: Debian's headless
Chromium, started by Playwright (which never downloads one here).

The headless shell (package ``chromium-headless-shell``: the same Blink without the
desktop browser around it, about half the CPU per page of ``/usr/bin/chromium
--headless``) is taken when present, else ``/usr/bin/chromium``; ``BAMBOO_CHROMIUM``
overrides both. :func:`browser_missing` says in one line why none can run here.
The console benches' set-up, page and ``main`` end (bench/console_tail_cost.py,
bench/console_tail_heap.py): :func:`served_to_chromium`, :func:`console_page`,
:func:`run_if_browser`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

HEADLESS_SHELL = "/usr/lib/chromium/chromium-headless-shell"
CHROMIUM = os.environ.get(
    "BAMBOO_CHROMIUM", HEADLESS_SHELL if os.path.exists(HEADLESS_SHELL) else "/usr/bin/chromium"
)
INSTALL_HINT = "install Debian's chromium: apt-get install -y chromium-headless-shell"
# The machine has no network: nothing that phones home, no QUIC, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    """Why a browser cannot run here (one line saying how to install it), or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return INSTALL_HINT
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "install the dev extras (pip install -e '.[dev]') for playwright"
    return None


@contextlib.asynccontextmanager
async def launch() -> AsyncIterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def served_to_chromium(prefix: str) -> AsyncIterator[tuple[Any, Any]]:
    """A server child with its default options on a JSONL store in a temporary
    directory named from ``prefix`` (bench/soak_server.py's ``Server``), and a
    Chromium; both stopped on exit."""
    from .soak_server import Server  # here: the browser tests import this module too

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", ())
        await asyncio.to_thread(server.start)
        try:
            async with launch() as browser:
                yield server, browser
        finally:
            await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def console_page(browser: Any, port: int) -> AsyncIterator[tuple[Any, Any]]:
    """The console of the server on ``port``, open on no session (it requests nothing),
    in a browser context of its own, with a CDP session whose Performance metrics are
    on; the context closed on exit."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        await page.goto(f"http://127.0.0.1:{port}/console#/s/%")
        yield page, cdp
    finally:
        await context.close()


def run_if_browser(what: str, run: Callable[[], Coroutine[Any, Any, object]]) -> int:
    """A browser bench's ``main`` end: ``run()`` in an event loop, or, where no browser
    can run, one line saying ``what`` was skipped and why; exit status 0 either way."""
    missing = browser_missing()
    if missing is not None:
        print(f"{what} skipped: {missing}")
        return 0
    asyncio.run(run())
    return 0
