"""The browser the browser tests and the browser benches drive: Debian's headless
Chromium, started by Playwright (which never downloads one here).

The headless shell (package ``chromium-headless-shell``: the same Blink without the
desktop browser around it, about half the CPU per page of ``/usr/bin/chromium
--headless``) is taken when present, else ``/usr/bin/chromium``; ``BAMBOO_CHROMIUM``
overrides both. :func:`browser_missing` says in one line why none can run here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
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
