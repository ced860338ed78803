"""Helpers of the browser tests: Debian's headless Chromium driven by Playwright.

The browser is Debian's headless shell of Chromium, started as bench/chromium.py says
(about half the CPU per page of ``/usr/bin/chromium --headless``, measured over the 67
browser tests: 30 s against 66 s). Playwright never downloads one. Without a browser,
or without the ``playwright`` package, the browser tests skip with one line saying how
to install it. Each test process gets one browser (Playwright starts it with a fresh,
temporary profile), each page a fresh context; the ``browser`` fixture of
``conftest.py`` saves a screenshot of every page a failed test left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from tests.http_support import http_server_of

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("BAMBOO_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
WAIT = 10.0  # seconds any one expectation in a page may take


async def save_screenshots(contexts: list[Any], name: str) -> list[Path]:
    """A PNG of every open page of ``contexts``, under ARTIFACTS, named after the test."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    saved = []
    for c, context in enumerate(contexts):
        for p, page in enumerate(context.pages):
            path = ARTIFACTS / f"{name}-{c}-{p}.png"
            with contextlib.suppress(Exception):  # a crashed page has no picture
                await page.screenshot(path=str(path), full_page=True, timeout=5000)
                saved.append(path)
    return saved


def watch_page(page: Any) -> list[str]:
    """Collects the page's uncaught errors and console errors (CSP violations
    included); a test asserts the list is empty."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: Any) -> None:
        if message.type == "error" and "net::ERR_CONNECTION_REFUSED" not in message.text:
            problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    return problems


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serves ``directory`` on a loopback port; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http_server_of(functools.partial(Quiet, directory=str(directory))) as url:
        yield url


def have_node() -> str | None:
    return shutil.which("node")
