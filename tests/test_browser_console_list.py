"""The web console in a real headless Chromium: the session list (its filters, sort
and pages), what a user's token lets it see (and the console asking for one; its
refusals are in test_browser_console_token.py), a token kept while the server is away
or busy, a narrow screen, and markup shown as text under a policy that blocks
injection.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import (
    DASH,
    SECRET,
    TOKEN_KEY,
    console_url,
    make_session,
    make_token,
    ws_url,
)
from tests.proxies import HttpProxy
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)


async def submit_filters(page: Any, **fields: str) -> None:
    """Fills the filters' fields, clicks Apply and waits for the form the list is drawn
    again with (on the hash's change, an event of its own): the next fields filled
    before it came were filled in the form it replaced, and lost (a flake: a limit of
    10 submitted, all 13 rows shown, as reset_filters had)."""
    shown = await page.query_selector("#filters")
    for name, value in fields.items():
        control = page.locator(f"#f-{name}")
        if await control.evaluate("el => el.tagName") == "SELECT":
            await control.select_option(value)
        else:
            await control.fill(value)
    await page.click("#filters button[type=submit]")
    await page.wait_for_function("form => !form.isConnected", arg=shown)


async def reset_filters(page: Any) -> None:
    """Clicks Reset and waits for the form it brings: the list is drawn again on the
    hash's change, an event of its own, and fields filled before it comes are filled in
    the form it replaces (the next Apply then submitted the empty new one: a flake)."""
    shown = await page.query_selector("#filters")
    await page.click("#filters a:text('Reset')")
    await page.wait_for_function("form => !form.isConnected", arg=shown)


async def test_list_filters_sorts_and_pages(browser: Any) -> None:
    async with run_server() as server:
        url = ws_url(server)
        for i in range(8):
            await make_session(url, f"alice-{i}", "alice", f"Alice chat {i}")
        for i in range(4):
            await make_session(url, f"bob-{i}", "bob", f"Groceries {i}")
        async with await BambooClient.connect(url, "bob-3") as closer:
            await closer.set_state("closed")
        async with await BambooClient.connect(url, "weather", create=True, user_id="alice") as c:
            for text in ("one", "two", "three"):
                await c.send_message(Message.user(text))

        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(f"http://127.0.0.1:{server.port}/")  # redirects to the console
        rows = page.locator("#sessions tbody tr")
        await expect(rows).to_have_count(13)
        await expect(page.locator("#range")).to_have_text(f"1{DASH}13 of 13")
        assert page.url.startswith(console_url(server.port))

        await submit_filters(page, user_id="bob")
        await expect(rows).to_have_count(4)
        assert "user_id=bob" in page.url
        await submit_filters(page, state="closed")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-id", "bob-3")

        await reset_filters(page)
        await expect(rows).to_have_count(13)
        await submit_filters(page, title_contains="chat 7")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-id", "alice-7")

        await reset_filters(page)
        await submit_filters(page, sort_by="message_count", sort_order="desc")
        await expect(rows.first).to_have_attribute("data-id", "weather")
        await expect(rows.first.locator("td[data-label=Msgs]")).to_have_text("3")

        await submit_filters(page, limit="10")
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        await page.click("#next")
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#next")).to_be_disabled()
        assert "cursor=" in page.url and "offset=" not in page.url  # by the listing's cursor
        await page.click("#prev")  # by offset, from the cursor's page
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        await page.go_back()
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")
        await page.go_back()
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        # A page past the end (an old link, sessions gone since) offers the last one.
        await page.goto(console_url(server.port, "#/?limit=10&offset=40"))
        await expect(page.locator("#results .empty")).to_contain_text("13 match")
        await page.click("#last-page")
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")

        await reset_filters(page)
        await submit_filters(page, created_after="2999-01-01T00:00")
        await expect(page.locator("#results .empty")).to_have_text("No sessions match.")
        await submit_filters(page, created_after="2000-01-01T00:00")
        await expect(rows).to_have_count(13)
        await expect(page.locator("#stat-connections")).to_have_text("0")
        assert problems == []


async def test_with_auth_a_user_token_sees_only_its_own_sessions(browser: Any) -> None:
    async with run_server(auth_secret=SECRET) as server:
        url = ws_url(server)
        alice, bob = make_token("alice"), make_token("bob")
        for sid, owner, title in [("a-1", alice, "Alice one"), ("a-2", alice, "Alice two")]:
            await make_session(url, sid, None, title, token=owner)
        await make_session(url, "b-1", None, "Bob one", token=bob)

        page = await browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(console_url(server.port))
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#token-input", "not.a.token")
        await page.click("#login button[type=submit]")
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

        await page.fill("#token-input", alice)
        await page.click("#login button[type=submit]")
        rows = page.locator("#sessions tbody tr")
        await expect(rows).to_have_count(2)
        assert sorted(await rows.evaluate_all("rows => rows.map(r => r.dataset.id)")) == [
            "a-1",
            "a-2",
        ]
        await expect(page.locator("#who-name")).to_have_text("alice (user)")

        await submit_filters(page, user_id="bob")
        await expect(page.locator("#results .notice")).to_contain_text("403")

        await page.goto(console_url(server.port, "#/s/b-1"))
        await expect(page.locator("#status")).to_have_text("This token may not see this session.")
        # Refused is not closed: the session is live, for its owner.
        await expect(page.locator("#conn-state")).to_have_text("not attached")
        # Only the refusal: no empty cards as if there were a session to show.
        await expect(page.locator(".card")).to_have_count(0)
        await page.goto(console_url(server.port, "#/s/none-such"))
        await expect(page.locator("#status")).to_have_text(
            "No such session: it was deleted, or has expired."
        )
        await expect(page.locator(".card")).to_have_count(0)

        await page.goto(console_url(server.port, "#/s/a-1"))
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
        async with await BambooClient.connect(url, "a-1", token=alice, role="agent") as agent:
            await agent.publish(AgentEvent.token("for alice only"))
            await expect(page.locator("#tail .ev-text .text")).to_have_text("for alice only")

        stored = await page.evaluate("sessionStorage.getItem('bamboo.console.token')")
        assert stored == alice
        assert not [u for u in requests if alice in u or "token" in u.split("/")[-1]]
        assert alice not in page.url

        await page.goto(console_url(server.port))
        await page.click("#who button")
        await expect(page.locator("#login")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('bamboo.console.token')") is None
        await page.fill("#token-input", make_token("root", role="admin"))
        await page.click("#login button[type=submit]")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#who-name")).to_have_text("root (admin)")


async def test_a_token_is_kept_when_the_server_is_away_or_busy(browser: Any) -> None:
    """Only a refusal of the token (401, 4401) makes the console forget it: a read
    answered 503 (a proxy in front of a server that is down), or not answered at all,
    says nothing of the token, and once the server is back a reload goes on with it."""
    async with run_server(auth_secret=SECRET) as server:
        alice = make_token("alice")
        await make_session(ws_url(server), "a-1", None, "Alice one", token=alice)
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            page = await browser.new_page()
            await page.goto(console_url(port))
            await page.fill("#token-input", alice)
            await page.click("#login button[type=submit]")
            rows = page.locator("#sessions tbody tr")
            await expect(rows).to_have_count(1)
            failure = page.locator("#results .notice")
            # The list's next read gets 503 (on a new connection: the cut ends those the
            # browser keeps alive, whose later requests the proxy would pass on).
            proxy.cut()
            proxy.mend()
            proxy.refusing = True
            await submit_filters(page, user_id="alice")
            await expect(failure).to_contain_text("503")
            assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == alice
            proxy.cut()  # and the next none
            await submit_filters(page, user_id="")
            await expect(failure).to_contain_text("Failed to fetch")
            await expect(page.locator("#login")).to_have_count(0)
            assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == alice
            proxy.refusing = False
            proxy.mend()
            await page.reload()
            await expect(rows).to_have_count(1)
            await expect(page.locator("#who-name")).to_have_text("alice (user)")
        finally:
            await proxy.close()


async def test_console_fits_a_narrow_screen(browser: Any) -> None:
    async with run_server() as server:
        url = ws_url(server)
        for i in range(3):
            await make_session(url, f"narrow-{i}", "alice", f"A rather long session title {i}")
        page = await browser.new_page(viewport={"width": 375, "height": 740})
        problems = watch_page(page)
        await page.goto(console_url(server.port))
        await expect(page.locator("#sessions tbody tr")).to_have_count(3)
        await expect(page.locator("#sessions thead")).to_be_hidden()  # rows become cards
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert await page.evaluate(fits)
        await page.click("#sessions a:text('narrow-1')")
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
        assert await page.evaluate(fits)
        meta, tail = page.locator("#meta"), page.locator("#tail")
        meta_box, tail_box = await meta.bounding_box(), await tail.bounding_box()
        assert meta_box is not None and tail_box is not None
        assert tail_box["y"] > meta_box["y"]  # one column
        assert problems == []


async def test_console_shows_markup_as_text_and_its_policy_blocks_injection(browser: Any) -> None:
    async with run_server() as server:
        title = '<img src=x onerror="window.pwned=1"><b>bold</b>'
        await make_session(ws_url(server), "xss", "mallory", title)
        page = await browser.new_page()
        await page.goto(console_url(server.port))
        cell = page.locator('#sessions tr[data-id="xss"] td[data-label="Title"]')
        await expect(cell).to_have_text(title)
        assert await cell.locator("img, b").count() == 0
        await page.goto(console_url(server.port, "#/s/xss"))
        await expect(page.locator("#session-title")).to_have_text(title)
        assert await page.evaluate("window.pwned") is None

        # Trusted Types: string sinks for HTML and script URLs throw on this page.
        for sink in (
            "document.body.innerHTML = '<i>x</i>'",
            "document.createElement('script').src = 'data:text/javascript,window.pwned=1'",
        ):
            attempt = f"() => {{ try {{ {sink}; return 'done'; }} catch (e) {{ return e.name; }} }}"
            assert await page.evaluate(attempt) == "TypeError", sink
        assert await page.evaluate("window.pwned") is None
