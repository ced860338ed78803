"""Test-suite settings: under CI, hypothesis runs derandomized, so a submission's CI
run is reproducible and a rare example found by chance cannot block a landing; local
runs keep exploring new examples. Also the ``browser`` fixture of the browser tests,
which saves screenshots of a failed test's pages."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# -- browser tests (tests/browser.py) ------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each phase's report on the test item, so fixtures can see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium per test module (whose tests share the module's event
    loop: ``pytestmark = pytest.mark.asyncio(loop_scope="module")``)."""
    from tests.browser import browser_missing, launch

    missing = browser_missing()
    if missing is not None:
        pytest.skip(missing)
    async with launch() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def browser(request: pytest.FixtureRequest, chromium: Any) -> AsyncIterator[Any]:
    """The module's Chromium for one test: every context (``browser.new_page()`` makes
    one) the test opened is closed after it, with screenshots of its pages saved as
    artifacts when the test failed."""
    from tests.browser import save_screenshots

    before = set(chromium.contexts)
    yield chromium
    opened = [context for context in chromium.contexts if context not in before]
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for path in await save_screenshots(opened, request.node.name):
            print(f"screenshot: {path}")
    for context in opened:
        await context.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line, when browser tests were skipped, saying how to run them."""
    from tests.browser import INSTALL_HINT

    for report in terminalreporter.stats.get("skipped", []):
        if INSTALL_HINT in str(report.longrepr):
            terminalreporter.write_line(f"browser tests skipped: {INSTALL_HINT}")
            return
