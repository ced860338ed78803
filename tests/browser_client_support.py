"""What the tests of the JavaScript client in a real headless Chromium share
(tests/test_browser_client*.py): a blank page of another origin with the client
imported from the server, and ``run_server`` with a short shutdown grace."""

from __future__ import annotations

import contextlib
from typing import Any

from bamboo_session.server.app import BambooServer
from tests.support import run_server


async def client_page(browser: Any, port: int, app: str) -> Any:
    """A blank page of another origin with the client imported as ``window.bamboo``."""
    page = await browser.new_page()
    await page.goto(f"{app}/")
    await page.evaluate(
        "async (url) => { window.bamboo = await import(url); }",
        f"http://127.0.0.1:{port}/client/bamboo.js",
    )
    return page


def serving(**overrides: Any) -> contextlib.AbstractAsyncContextManager[BambooServer]:
    """``run_server`` with a short shutdown grace: a page that stops reading (one left
    open when its test ends) holds a graceful stop for the grace period at most."""
    return run_server(shutdown_grace=0.5, **overrides)
