"""The web console's sign-in, in a real headless Chromium, given a token as people paste
it: with the `Bearer ` of the header it was copied from, wrapped over lines (which the
input field turns into spaces), or with an invisible character picked up from a web
page. A JWT holds no blank, and no character but letters, digits, `-`, `_` and dots:
the form takes the token out of such a paste, and says so when what is left cannot be
one, rather than keeping it (a
character a header cannot carry made every read fail with the browser's TypeError, a
page of `Could not list sessions (TypeError: Failed to execute 'fetch' …)`, until the
user signed out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from tests.browser import watch_page
from tests.console_support import SECRET, TOKEN_KEY, console_url, make_session, make_token, ws_url
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)


def padded_token(sub: str) -> str:
    """A token signed over base64 parts that keep their ``=`` padding: RFC 7515 leaves
    it out, some issuers do not, and the server's PyJWT takes it."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "role": "user", "exp": int(time.time()) + 600, "n": "12"}
    signed = f"{header}.{part(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    token = f"{signed}.{part(signature)}"
    assert token.count("=") >= 2  # (padded: its signature and another part at least)
    return token


async def sign_in(page: Any, port: int, pasted: str) -> None:
    await page.goto(console_url(port))
    await page.fill("#token-input", pasted)
    await page.click("#login button[type=submit]")


async def test_a_pasted_token_is_taken_out_of_its_header_and_its_line_breaks(browser: Any) -> None:
    alice = make_token("alice")
    async with run_server(auth_secret=SECRET) as server:
        await make_session(ws_url(server), "mine", None, "Mine", token=alice)
        for pasted in (
            f"Bearer {alice}",
            f"  bearer\t{alice}\n",
            f"{alice[:30]}\n{alice[30:60]}\r\n{alice[60:]}",
            f"\N{ZERO WIDTH SPACE}{alice}\N{ZERO WIDTH NO-BREAK SPACE}",
        ):
            page = await browser.new_page()
            problems = watch_page(page)
            await sign_in(page, server.port, pasted)
            await expect(page.locator("#sessions tbody tr"), repr(pasted)).to_have_count(1)
            await expect(page.locator("#who-name")).to_have_text("alice (user)")
            assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == alice
            assert [p for p in problems if "status of 401" not in p] == [], pasted
            await page.close()


async def test_a_token_whose_parts_keep_their_base64_padding_signs_in(browser: Any) -> None:
    """The server takes it: the form must not refuse it as no token (it did: its `=`
    is no letter, digit, `-` or `_`), which locked its holder out of the console."""
    alice = padded_token("alice")
    async with run_server(auth_secret=SECRET) as server:
        await make_session(ws_url(server), "mine", None, "Mine", token=alice)
        page = await browser.new_page()
        await sign_in(page, server.port, f"Bearer {alice}")
        await expect(page.locator("#sessions tbody tr")).to_have_count(1)
        await expect(page.locator("#who-name")).to_have_text("alice (user)")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == alice
        await page.close()


async def test_a_paste_that_cannot_be_a_token_is_refused_by_the_form(browser: Any) -> None:
    alice = make_token("alice")
    async with run_server(auth_secret=SECRET) as server:
        page = await browser.new_page()
        for pasted in (f"{alice}\N{HORIZONTAL ELLIPSIS}", "not a token", "é"):
            await sign_in(page, server.port, pasted)
            notice = page.locator("#login .notice")
            await expect(notice).to_contain_text("not a token", ignore_case=True)
            assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        await page.close()


async def test_a_stored_token_no_header_can_carry_is_forgotten_as_refused(browser: Any) -> None:
    """One put in the tab's storage by something else than the form (a script, the
    user's own tools): its reads are refused as a bad token's are, and the page asks
    for another, instead of showing the browser's TypeError on every read."""
    async with run_server(auth_secret=SECRET) as server:
        page = await browser.new_page()
        await page.goto(console_url(server.port))
        await expect(page.locator("#login")).to_be_visible()
        stored = make_token("alice") + "\N{HORIZONTAL ELLIPSIS}"
        await page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', '{stored}')")
        await page.reload()
        await expect(page.locator("#login .notice")).to_contain_text("refused")
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        await expect(page.locator("#results")).to_have_count(0)
        await page.close()
