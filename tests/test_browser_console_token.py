"""The web console in a real headless Chromium, as the server refuses a token (401 over
HTTP, 4401 on the stream): the console forgets a refused token at once and asks for
one; a refusal of another token than the one in the tab's storage (a read made before
a sign-out and in, or before a script put one in) keeps that one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from tests.browser import watch_page
from tests.console_support import (
    SECRET,
    TOKEN_KEY,
    console_url,
    make_session,
    make_token,
    ws_url,
)
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)


# What the page showed, recorded as it shows it (window.shown): whether its stream was
# ever open, and each name its top bar gave. A test whose token lives 6 s reads these
# once it expired: a check made while it lived raced its end on a busy machine.
RECORD_SHOWN = """(() => {
  window.shown = { open: false, names: [] };
  new MutationObserver(() => {
    if (document.querySelector("#conn-state")?.dataset.state === "open") window.shown.open = true;
    const name = document.querySelector("#who-name")?.textContent;
    if (name && !window.shown.names.includes(name)) window.shown.names.push(name);
  }).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
})()"""


def reads_with(page: Any, token: str) -> list[Any]:
    """The page's reads of sessions from now on that carry ``token``, as they are made
    (not its reads of the server's figures, every 2 s, with the same token)."""
    carrying: list[Any] = []

    def note(request: Any) -> None:
        sent = request.headers.get("authorization") == f"Bearer {token}"
        if sent and "/api/v1/sessions" in request.url:
            carrying.append(request)

    page.on("request", note)
    return carrying


def expired_in_place_of(route: Any, token: str) -> dict[str, str]:
    """The headers of ``route``'s request with ``token`` (expired) in place of its own:
    sent on, the read is refused (401) as its own token's would be once expired (the
    page checks no exp, the server does), with no wait for that token to expire."""
    return {**route.request.headers, "authorization": f"Bearer {token}"}


async def closed_session_of_60_messages(server: Any, session_id: str, token: str) -> None:
    """A session of 60 messages, closed: its page shows the newest 50 and offers older."""
    async with await BambooClient.connect(
        ws_url(server), session_id, create=True, token=token
    ) as agent:
        for i in range(60):
            await agent.send_message(Message.user(f"message {i}"))
        await agent.set_state("closed")


async def console_with_first_list_read_held(browser: Any, port: int) -> tuple[Any, Any, list[Any]]:
    """A new page on the console whose first read of the session list is held, made
    with no token: the page, that read's route (for the test to let through), and every
    read of the list the page makes, held one included."""
    first: list[Any] = []
    asked = asyncio.Event()
    reads: list[Any] = []

    async def hold_the_first_read(route: Any) -> None:
        reads.append(route.request)
        if first:
            await route.continue_()
        else:
            first.append(route)
            asked.set()

    page = await browser.new_page()
    await page.route("**/api/v1/sessions?*", hold_the_first_read)
    await page.goto(console_url(port))
    await asyncio.wait_for(asked.wait(), 10)
    assert "authorization" not in first[0].request.headers
    return page, first[0], reads


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
        await page.add_init_script(RECORD_SHOWN)
        await page.goto(console_url(server.port, "#/s/watched"))
        # 6 s for the page to open and name alice before the token ends (at 3 s, under
        # four test processes on two cores, a page once opened too late). A page that
        # opened too late even so was refused before it watched: signed in again with a
        # token that lives twice as long, not raced again on the same bet.
        for lifetime in (6, 12, 24):
            await page.fill("#token-input", make_token("alice", ttl=lifetime))
            await page.click("#login button[type=submit]")
            refused = page.locator("#login .notice")
            await expect(refused).to_contain_text("refused", timeout=(lifetime + 14) * 1000)
            shown = await page.evaluate("window.shown")
            if shown["open"]:
                break
            await page.reload()  # no notice left, and what it shows recorded anew
        # Before that, the page was open, its top bar naming the token's user.
        assert shown == {"open": True, "names": ["alice (user)"]}, shown
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
        # Two tokens of the same user (their lifetimes differ, so do they); the held read
        # goes on with one that expired, as ``old`` would have meanwhile (it once did, at
        # a 15 s lifetime the test waited out).
        old, new = make_token("alice", ttl=300), make_token("alice")
        expired = make_token("alice", ttl=-60)
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{old}')")
        await page.goto(console_url(server.port, "#/s/over"))
        await asyncio.wait_for(sent.wait(), 10)
        await page.click("#who button")  # sign out: the page asks for a token
        await page.fill("#token-input", new)
        await page.click("#login button[type=submit]")
        notes = page.locator("#tail .ev-note")
        await expect(notes.last).to_contain_text("This session is closed")
        async with page.expect_response(lambda r: r.request.url == held[0].request.url) as late:
            for route in held:
                # The server answers 401: that token expired.
                await route.continue_(headers=expired_in_place_of(route, expired))
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
        page, held, _ = await console_with_first_list_read_held(browser, server.port)
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{alice}')")
        async with page.expect_response(lambda r: r.request == held.request) as late:
            await held.continue_()
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
        await closed_session_of_60_messages(server, "long", alice)
        page = await browser.new_page()
        # The read of older messages goes on with the same user's token, expired, as the
        # page's own would have meanwhile (it once did, at a 6 s lifetime waited out).
        # Only that read: the page's other reads (its figures, every 2 s) go on with its
        # own, valid token, so the refusal the page takes is that one's.
        expired = make_token("alice", ttl=-60)

        async def older_with_an_expired_token(route: Any) -> None:
            if "before=" in route.request.url:
                await route.continue_(headers=expired_in_place_of(route, expired))
            else:
                await route.continue_()

        await page.route("**/api/v1/sessions/long?*", older_with_an_expired_token)
        await page.goto(console_url(server.port))
        await page.fill("#token-input", make_token("alice", ttl=300))
        await page.click("#login button[type=submit]")
        await page.goto(console_url(server.port, "#/s/long"))
        await expect(page.locator("#messages li")).to_have_count(50)
        await page.click("#older")
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        await expect(page.locator("#who-name")).to_have_count(0)


async def test_a_token_a_script_put_in_is_forgotten_at_its_first_refusal(browser: Any) -> None:
    """A token put in the tab's storage by something else than the page (a script, the
    user's own tools) while a closed session's page is shown is sent with its next read
    (older messages): refused (401), it is forgotten at once, and the page asks for a
    token saying it was refused. It is not sent again first (it was: the page, shown
    with the earlier token, was shown again with that one, whose refusal it then took)."""
    async with run_server(auth_secret=SECRET) as server:
        alice = make_token("alice")
        await closed_session_of_60_messages(server, "long", alice)
        page = await browser.new_page()
        await page.goto(console_url(server.port))
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{alice}')")
        await page.goto(console_url(server.port, "#/s/long"))
        await expect(page.locator("#messages li")).to_have_count(50)
        # The page's last read (the tail's events) is answered: the next is the click's.
        await expect(page.locator("#tail .ev-note").last).to_contain_text("This session is closed")
        forged = make_token("alice", secret="not-the-server-secret-" + "y" * 32)
        sent = reads_with(page, forged)
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{forged}')")
        await page.click("#older")
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        assert [r.url for r in sent] == [sent[0].url]
        assert "before=" in sent[0].url  # the older messages' read, and only that one


async def test_a_script_put_in_token_refused_after_an_earlier_refusal_is_forgotten(
    browser: Any,
) -> None:
    """The list's first read, made with no token, is refused only once a script put in a
    token the server refuses too: the page is shown again with that token, whose own
    refusal forgets it and asks for a token, saying so. The page does not go on
    showing itself again: the token is sent once, and the list read twice in all."""
    async with run_server(auth_secret=SECRET) as server:
        page, held, reads = await console_with_first_list_read_held(browser, server.port)
        forged = make_token("alice", secret="not-the-server-secret-" + "y" * 32)
        sent = reads_with(page, forged)
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{forged}')")
        await held.continue_()
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        assert len(sent) == 1
        assert len(reads) == 2
