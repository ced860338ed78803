"""The web console in a real headless Chromium, as the server's JSONL store fails a
sync: `/api/v1/stats` says `store_sync_failed: 1` from then until a restart, and the
page warns of it above its main column, saying what it means and what to do, until the
restarted server says 0. The failure is an EIO injected into the JSONL store's
``fsync_dir`` of a server run in-process, as tests/test_server_metrics.py does: a
real delete, whose rename's directory sync fails.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence.jsonl import deletes
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import console_url, ws_url
from tests.support import get, run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

TITLE = "Warning: the server could not sync its store to disk"


async def test_a_failed_store_sync_is_a_warning_until_the_server_restarts(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning appears while the page is open (its figures are read every two
    seconds), stays while the server is away (its last word was the failure) and goes
    once the server, restarted on the same data and port, reports no failed sync."""
    real = deletes.fsync_dir
    failed: list[Path] = []

    def failing_once(path: Path) -> None:
        if Path(path).name == "sessions" and not failed:
            failed.append(Path(path))
            raise OSError(errno.EIO, "injected EIO")
        real(path)

    page = await browser.new_page()
    problems = watch_page(page)
    warning = page.locator("#store-sync-failed")
    async with run_server(tmp_path) as server:
        port = server.port
        async with await BambooClient.connect(ws_url(server), "doomed", create=True) as agent:
            await agent.publish(AgentEvent.custom("step", 1))
        await page.goto(console_url(port))
        await expect(page.locator("#stat-live")).to_have_text("1")
        await expect(warning).to_be_hidden()

        monkeypatch.setattr(deletes, "fsync_dir", failing_once)
        await server.manager.delete_session("doomed")  # acknowledged: it is in the WAL
        assert failed
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 1

        # Found by its role and its name, as assistive technology finds it: the words
        # say what happened and what to do, with no colour needed to tell.
        alert = page.get_by_role("alert", name=TITLE)
        await expect(alert).to_be_visible()
        await expect(alert).to_contain_text("may not be on disk")
        await expect(alert).to_contain_text("check the server's disk")
        await expect(alert).to_contain_text("restart the server")
        monkeypatch.undo()

    # Away, the page keeps the server's last word: the warning stays.
    await expect(page.locator("#stats-away")).to_be_visible()
    await expect(warning).to_be_visible()

    async with run_server(tmp_path, port=port) as server:
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 0
        await expect(page.locator("#stats-away")).to_be_hidden()
        await expect(warning).to_be_hidden()
        await expect(page.get_by_role("alert")).to_have_count(0)
    # The page's reads while the server was down: refused connections only.
    assert [p for p in problems if "ERR_CONNECTION_REFUSED" not in p] == []


async def test_a_healthy_store_shows_no_warning(browser: Any, tmp_path: Path) -> None:
    """The server says `store_sync_failed: 0`: the warning is in the page, hidden from
    the start (held while the first figures are on their way, it is already hidden),
    and reading them moves nothing (the main column stays where it was); once the page
    has read its figures (the top bar shows them), there is no warning, and no alert
    at all. Its presence is checked first, so that a renamed or removed warning cannot
    pass for a hidden one."""
    async with run_server(tmp_path) as server:
        async with await BambooClient.connect(ws_url(server), "fine", create=True) as agent:
            await agent.publish(AgentEvent.custom("step", 1))
            page = await browser.new_page()
            problems = watch_page(page)
            held: list[Any] | None = []  # the page's reads of its figures, until let go
            asked = asyncio.Event()

            async def hold_reads(route: Any) -> None:
                if held is None:
                    await route.continue_()
                else:
                    held.append(route)
                    asked.set()

            await page.route("**/api/v1/stats", hold_reads)
            await page.goto(console_url(server.port))
            await asyncio.wait_for(asked.wait(), 10)
            warning = page.locator("#store-sync-failed")
            await expect(warning).to_have_count(1)
            # Checked now, not waited for: no figure has come, nothing could hide it.
            assert await warning.is_hidden()
            before = await page.locator("#main").bounding_box()
            waiting, held = held or [], None
            for route in waiting:
                await route.continue_()
            await expect(page.locator("#stat-connections")).to_have_text("1")
            assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 0
            await expect(warning).to_have_count(1)
            await expect(warning).to_be_hidden()
            await expect(page.get_by_role("alert")).to_have_count(0)
            assert await page.locator("#main").bounding_box() == before
    assert problems == []
