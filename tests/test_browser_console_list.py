"""The web console in a real headless Chromium: the session list (its filters, sort
and pages), what a user's token lets it see (and the console asking for a token, again
when it expires), a narrow screen, and markup shown as text under a policy that
blocks injection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import DASH, console_url, ws_url
from tests.proxies import HttpProxy
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)

SECRET = "console-test-secret-" + "x" * 32
TOKEN_KEY = "bamboo.console.token"  # where the console keeps its token (sessionStorage)


def make_token(sub: str, role: str = "user", ttl: int = 600) -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + ttl}, SECRET, "HS256")


async def make_session(
    url: str, session_id: str, user_id: str | None, title: str, **kw: Any
) -> None:
    async with await BambooClient.connect(
        url, session_id, create=True, user_id=user_id, title=title, **kw
    ):
        pass


async def submit_filters(page: Any, **fields: str) -> None:
    for name, value in fields.items():
        control = page.locator(f"#f-{name}")
        if await control.evaluate("el => el.tagName") == "SELECT":
            await control.select_option(value)
        else:
            await control.fill(value)
    await page.click("#filters button[type=submit]")


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

        await page.click("#filters a:text('Reset')")
        await expect(rows).to_have_count(13)
        await submit_filters(page, title_contains="chat 7")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-id", "alice-7")

        await page.click("#filters a:text('Reset')")
        await submit_filters(page, sort_by="message_count", sort_order="desc")
        await expect(rows.first).to_have_attribute("data-id", "weather")
        await expect(rows.first.locator("td[data-label=Msgs]")).to_have_text("3")

        await submit_filters(page, limit="10")
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        await page.click("#next")
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#next")).to_be_disabled()
        await page.go_back()
        await expect(page.locator("#range")).to_have_text(f"1{DASH}10 of 13")
        # A page past the end (an old link, sessions gone since) offers the last one.
        await page.goto(console_url(server.port, "#/?limit=10&offset=40"))
        await expect(page.locator("#results .empty")).to_contain_text("13 match")
        await page.click("#last-page")
        await expect(page.locator("#range")).to_have_text(f"11{DASH}13 of 13")

        await page.click("#filters a:text('Reset')")
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
        await page.fill("#token-input", "not-a-token")
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


async def test_a_token_that_expires_while_watching_signs_the_top_bar_out(browser: Any) -> None:
    """The server ends the page's connection as its token expires (4401, no leeway):
    the sign-in form replaces the page, and the top bar no longer names the user of
    that token nor offers to sign out. The console forgets that token at once: a reload
    asks for one from the start, and sends the expired one nowhere (it kept it, tried
    it again, and asked only once it was refused again)."""
    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        await make_session(ws_url(server), "watched", None, "Watched", token=make_token("alice"))
        page = await browser.new_page()
        problems = watch_page(page)
        await page.goto(console_url(server.port, "#/s/watched"))
        await page.fill("#token-input", make_token("alice", ttl=3))
        await page.click("#login button[type=submit]")
        await expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")
        await expect(page.locator("#who-name")).to_have_text("alice (user)")
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        await expect(page.locator("#who-name")).to_have_count(0)
        await expect(page.locator("#who button")).to_have_count(0)
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

        requests: list[Any] = []
        page.on("request", lambda request: requests.append(request))
        await page.reload()
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#login .notice")).to_have_count(0)  # none was refused
        assert requests
        assert [r.url for r in requests if "authorization" in await r.all_headers()] == []
        # The browser reports the 401s of the reads made with no token: no page error.
        assert [p for p in problems if "status of 401" not in p] == []


async def test_a_late_refusal_of_a_previous_token_keeps_the_new_one(browser: Any) -> None:
    """A read made with a token that expired meanwhile is refused (401) only once the
    user signed out and in with another: the page that made it is gone, and that 401
    says nothing of the new token, which stays, with the page it shows. (A closed
    session's stored events are read with the token of the page that asked; the read
    is held back until the new token is in, then sent as the browser made it.)"""
    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        async with await BambooClient.connect(
            ws_url(server), "over", create=True, token=make_token("alice")
        ) as agent:
            await agent.publish(AgentEvent.custom("step", {"i": 1}))
            await agent.set_state("closed")
        held: list[Any] = []
        sent = asyncio.Event()

        async def hold_old_reads(route: Any) -> None:
            if route.request.headers.get("authorization") == f"Bearer {old}":
                held.append(route)
                sent.set()
            else:
                await route.continue_()

        page = await browser.new_page()
        await page.route("**/api/v1/sessions/over/events?*", hold_old_reads)
        seen: list[str] = []  # every URL asked and every console line: no token in any
        page.on("request", lambda request: seen.append(request.url))
        page.on("console", lambda message: seen.append(message.text))
        await page.goto(console_url(server.port))
        # Made once the page is loaded, to live long enough for it to read the session on
        # a loaded machine; the test waits only until it ends. (The page checks no exp:
        # the server does, on the test's clock. Runs that timed out here with the page
        # asking for a token, as at 3 s and 6 s, fit the race that
        # test_a_refusal_of_a_read_made_before_a_token_was_put_in_keeps_that_token shows.)
        old, new = make_token("alice", ttl=15), make_token("alice")
        expires_at = jwt.decode(old, options={"verify_signature": False})["exp"]
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{old}')")
        await page.goto(console_url(server.port, "#/s/over"))
        await asyncio.wait_for(sent.wait(), 10)
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.5)  # the token expired
        await page.click("#who button")  # sign out: the page asks for a token
        await page.fill("#token-input", new)
        await page.click("#login button[type=submit]")
        notes = page.locator("#tail .ev-note")
        await expect(notes.last).to_contain_text("This session is closed")
        async with page.expect_response(lambda r: r.request.url == held[0].request.url) as late:
            for route in held:
                await route.continue_()  # the server answers 401: that token expired
        assert (await late.value).status == 401
        await page.wait_for_timeout(500)  # for the page to take that answer in
        await expect(page.locator("#login")).to_have_count(0)
        await expect(notes.last).to_contain_text("This session is closed")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == new
        await expect(page.locator("#who-name")).to_have_text("alice (user)")
        seen.append(await page.evaluate("location.href"))
        assert [line for line in seen if old in line or new in line] == []


async def test_a_refusal_of_a_read_made_before_a_token_was_put_in_keeps_that_token(
    browser: Any,
) -> None:
    """The page's first read, made with no token, is refused (401) only once a token was
    put in the tab's storage by something else than the page (a script, the user's own
    tools): that refusal says nothing of it, so the token is kept, not called refused,
    and the page is shown again with it."""
    async with run_server(auth_secret=SECRET) as server:
        alice = make_token("alice")
        await make_session(ws_url(server), "a-1", None, "Alice one", token=alice)
        first: list[Any] = []
        asked = asyncio.Event()

        async def hold_the_first_read(route: Any) -> None:
            if first:
                await route.continue_()
            else:
                first.append(route)
                asked.set()

        page = await browser.new_page()
        await page.route("**/api/v1/sessions?*", hold_the_first_read)
        await page.goto(console_url(server.port))
        await asyncio.wait_for(asked.wait(), 10)
        assert "authorization" not in first[0].request.headers
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{alice}')")
        async with page.expect_response(lambda r: r.request == first[0].request) as late:
            await first[0].continue_()
        assert (await late.value).status == 401
        await expect(page.locator("#sessions tbody tr")).to_have_count(1)
        await expect(page.locator("#login")).to_have_count(0)
        await expect(page.locator("#who-name")).to_have_text("alice (user)")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == alice


async def test_a_token_refused_to_load_older_messages_is_forgotten(browser: Any) -> None:
    """A closed session's page reads older messages when asked: a token that expired
    meanwhile is refused there as on any other read of the page (401), forgotten, and
    asked for again, instead of "Could not load messages" with the token kept."""
    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        alice = make_token("alice")
        async with await BambooClient.connect(
            ws_url(server), "long", create=True, token=alice
        ) as agent:
            for i in range(60):
                await agent.send_message(Message.user(f"message {i}"))
            await agent.set_state("closed")
        short = make_token("alice", ttl=3)
        expires_in = jwt.decode(short, options={"verify_signature": False})["exp"] - time.time()
        page = await browser.new_page()
        await page.goto(console_url(server.port))
        await page.fill("#token-input", short)
        await page.click("#login button[type=submit]")
        await page.goto(console_url(server.port, "#/s/long"))
        await expect(page.locator("#messages li")).to_have_count(50)
        await asyncio.sleep(expires_in + 0.5)
        await page.click("#older")
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        await expect(page.locator("#who-name")).to_have_count(0)


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
