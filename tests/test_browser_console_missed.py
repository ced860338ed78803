"""The web console in a real headless Chromium when a session ends while its page is
behind: the events the page missed are read over HTTP into its tail (the newest, when
more than the tail holds, with a line saying which are not shown); a read that fails,
or pages that stop short of their ``last_seq``, are said to leave events missing, with
a Reload that reads them again; a session replaced meanwhile (another log under the
same id) is said to be, none of its events spliced into the old tail, and one
replaced while live is said to be, its new log followed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer
from tests.browser import watch_page
from tests.console_missed_support import closed_while_the_page_is_away
from tests.console_support import DASH, console_url, ws_url
from tests.proxies import HttpProxy
from tests.support import run_server

playwright = pytest.importorskip("playwright.async_api")
expect = playwright.expect
pytestmark = pytest.mark.asyncio(loop_scope="session")
expect.set_options(timeout=10_000)
MAX_TAIL_CHARS = 500_000  # tail.js: characters the tail shows at most


async def test_events_the_page_missed_when_the_session_ended_are_read_over_http(
    browser: Any,
) -> None:
    """The session ends while the console's client is away, with events appended
    meanwhile: its client ends with ConnectionLost (events after seq 5 not delivered),
    which the page showed as a refusal, the client's raw message in red. It reads
    them over HTTP instead: the tail shows every event, the message list the new
    message, and the page that the session closed."""
    async with closed_while_the_page_is_away(browser, "behind", False) as (page, problems, stored):
        last_seq = stored["last_seq"]
        assert [e["seq"] for e in stored["events"]] == list(range(1, last_seq + 1))
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        # The line saying the page was disconnected after #5 parts the tokens in two. The
        # proxy cut the connection: no close frame, so no code or reason to name.
        await expect(tail.locator(".ev-note").first).to_have_text(
            "Disconnected after #5 (connection lost): reconnecting\N{HORIZONTAL ELLIPSIS}"
        )
        before = "".join(f"a{i} " for i in range(5))
        after = "".join(f"b{i} " for i in range(40))
        await expect(tail.locator(".ev-text .text")).to_have_text([before, after, "the end."])
        await expect(tail.locator(".ev-message")).to_contain_text(
            "Written while the page was away."
        )
        await expect(tail.locator('details.ev-tool[data-tool="call-9"]')).to_have_attribute(
            "data-status", "done"
        )
        # Why the connection ended: the resume refused (4409), not a close on it (1000).
        ended = tail.locator(".ev-note", has_text="Connection ended")
        await expect(ended).to_have_text("Connection ended: 4409 session closed.")
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#meta-state")).to_have_text("closed")
        await expect(page.locator("#status .notice")).to_have_count(0)
    assert problems == []


async def test_events_the_page_missed_that_cannot_be_read_are_said_to_be_missing(
    browser: Any,
) -> None:
    """The same, but the page's HTTP reads fail (503): not a refusal either, but a
    notice that the events after seq 5 may be missing, with a button that reloads."""
    async with closed_while_the_page_is_away(browser, "behind-2", True) as (page, problems, _):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(page.locator("#status .notice-error")).to_have_count(0)
        await expect(page.locator("#reload")).to_be_visible()
        await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "5")
        await expect(page.locator("#tail .ev-note").last).to_contain_text("may be missing")
    assert problems == []


async def replace_session(server: BambooServer, session_id: str, epochs: list[str]) -> None:
    """Deletes the session and creates another under its id: a new log (another epoch,
    seqs from 1 again) of 60 tokens and a message, more events than the page had, then
    closes it. Its epoch goes to ``epochs``."""
    await server.manager.delete_session(session_id)
    async with await BambooClient.connect(
        ws_url(server), session_id, create=True, role="agent"
    ) as agent:
        await asyncio.gather(*(agent.publish(AgentEvent.token(f"new{i} ")) for i in range(60)))
        await agent.send_message(Message.assistant("Written in the session that replaced it."))
        await agent.set_state("closed")
        assert agent.epoch is not None
        epochs.append(agent.epoch)


async def expect_shown_as_replaced(page: Any, new_epoch: str) -> None:
    """The page shows that the session was replaced, with the events of the log it had
    (seq 5 the last) and none of the other's, and its Reload opens the session now
    under that id."""
    tail = page.locator("#tail")
    await expect(page.locator("#status .notice-warning")).to_contain_text("was replaced")
    await expect(tail.locator(".ev-note").last).to_contain_text("was replaced")
    await expect(tail).to_have_attribute("data-last-seq", "5")
    await expect(tail).not_to_contain_text("new0")
    await expect(page.locator("#messages")).not_to_contain_text("replaced it")
    await expect(page.locator("#meta-epoch")).not_to_have_text(new_epoch)
    await page.click("#reload")
    await expect(page.locator("#meta-epoch")).to_have_text(new_epoch)
    await expect(page.locator("#messages li .msg-body").last).to_have_text(
        "Written in the session that replaced it."
    )
    await expect(page.locator("#status .notice")).to_have_count(0)


async def test_a_session_replaced_while_the_page_was_away_is_not_spliced(browser: Any) -> None:
    """The session ends while the page is away, and is deleted and created again under
    its id (a new epoch, seqs from 1 again) before the page comes back: its client ends
    with ConnectionLost after seq 5 (the new log has events after 5). The page checks
    the epoch of the session it reads over HTTP against its stream's: another, so it
    shows none of the new log's events, but that the session was replaced, with a
    Reload that opens the new one. Before, it added the new log's events 6 and on to
    the tail, and its message to the list, as if they followed the old log's 5."""
    epochs: list[str] = []
    async with closed_while_the_page_is_away(
        browser,
        "replaced",
        False,
        meanwhile=lambda server: replace_session(server, "replaced", epochs),
    ) as (page, problems, _):
        await expect_shown_as_replaced(page, epochs[0])
    assert problems == []


async def test_a_session_replaced_while_the_page_reads_its_events_is_not_spliced(
    browser: Any,
) -> None:
    """The same, but the session is replaced between the page's read of its metadata
    (the epoch it had) and its read of the events: the events read are the new log's,
    and the page, which checks the epoch again after the read, shows none of them."""
    epochs: list[str] = []
    proxy = HttpProxy(0)

    async def replace_at_the_read(server: BambooServer) -> None:
        async def replace() -> None:
            await replace_session(server, "replaced-2", epochs)

        proxy.before_events_read = replace

    async with closed_while_the_page_is_away(
        browser, "replaced-2", False, proxy=proxy, meanwhile=replace_at_the_read
    ) as (page, problems, _):
        await expect(page.locator("#status .notice-warning")).to_contain_text("was replaced")
        assert proxy.before_events_read is None  # it ran
        await expect_shown_as_replaced(page, epochs[0])
    assert problems == []


async def test_reload_after_a_failed_read_shows_the_session_whole(browser: Any) -> None:
    """The page's HTTP reads of the events it missed fail (503), then work again. Its
    Reload reads them again: the tail shows every event (the ones shown before the
    failure still there, the missed ones after them) and nothing more says they may
    be missing, the message list holds the message written meanwhile, and the page
    says the session closed. A Reload while the reads still fail leaves the page as it
    is, with the warning and its button. Before, Reload reloaded the page, which shows
    a closed session's history and no events: the tail the page showed was gone."""
    proxy = HttpProxy(0)
    async with closed_while_the_page_is_away(browser, "behind-5", True, proxy=proxy) as (
        page,
        problems,
        stored,
    ):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        tail = page.locator("#tail")
        await page.evaluate("window.sameDocument = true")
        await page.click("#reload")  # the reads still fail
        await expect(page.locator("#reload")).to_be_enabled()
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(tail.locator(".ev-note", has_text="may be missing")).to_have_count(1)
        await expect(tail).to_have_attribute("data-last-seq", "5")

        proxy.refusing = False
        last_seq = stored["last_seq"]
        await page.click("#reload")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        texts = await tail.locator(".ev-text .text").all_text_contents()
        tokens = "".join(f"a{i} " for i in range(5)) + "".join(f"b{i} " for i in range(40))
        assert "".join(texts) == tokens + "the end.", texts
        await expect(tail.locator(".ev-message")).to_contain_text(
            "Written while the page was away."
        )
        await expect(tail.locator('details.ev-tool[data-tool="call-9"]')).to_have_attribute(
            "data-status", "done"
        )
        await expect(tail.locator(".ev-note", has_text="may be missing")).to_have_count(0)
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#meta-state")).to_have_text("closed")
        await expect(page.locator("#status .notice")).to_have_count(0)
        assert await page.evaluate("window.sameDocument") is True
    assert problems == []


async def test_more_events_missed_than_the_tail_holds_shows_the_newest(browser: Any) -> None:
    """The same with 1,200 tokens published while the page was away, more events than
    the tail shows (300 blocks): the page reads only the newest 298, after a line
    saying which are not shown, and the message list is read again from storage."""
    async with closed_while_the_page_is_away(browser, "behind-3", False, tokens=1200) as (
        page,
        problems,
        stored,
    ):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        note = f"Events 6{DASH}{last_seq - 298} are not shown"
        await expect(tail.locator(".ev-note").nth(1)).to_contain_text(note)  # after "Disconnected"
        await expect(tail.locator(".ev-text .text").last).to_have_text("the end.")
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(page.locator("#messages li .msg-body").last).to_have_text(
            "Written while the page was away."
        )
        await expect(page.locator("#status .notice")).to_have_count(0)
    assert problems == []


async def test_more_events_missed_than_the_tail_holds_says_which_are_not_shown(
    browser: Any,
) -> None:
    """The same with 1,200 events of a block each (custom events, which do not grow one
    block as tokens do): a line says which events are not shown, and the first of those
    read stays in the tail. Before, the page read 1,000 events after that line, and
    with the line that the session closed the tail (1,000 blocks) dropped that line
    (and, were each of them a block, the oldest event read): nothing said that events
    were left out. The tail, past its bound by the lines, drops its oldest block
    (#1-#5): the events left out run on from those, and its first line says them all,
    "Events 1-N not shown" (before, that line said "Events 1-5", above another,
    "Events 6-N are not shown": two lines for one run)."""
    async with closed_while_the_page_is_away(
        browser, "behind-4", False, 1200, lambda i: AgentEvent.custom("away", {"i": i})
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        await expect(tail.locator(".ev-note", has_text="not shown")).to_have_count(0)
        note = page.locator("#tail-earlier")
        await expect(note).to_have_count(1)
        text = await note.text_content()
        assert text is not None and text.startswith(f"Events 1{DASH}"), text
        shown_from = int(text.split(DASH)[1].split(" ")[0]) + 1
        assert shown_from == last_seq - 297  # the newest 298, with the two lines
        # (The note that the page was disconnected after #5 between them.)
        after = note.locator("xpath=following-sibling::*[@data-from][1]")
        await expect(after.locator(".seq")).to_have_text(f"#{shown_from}")
    assert problems == []


async def test_more_characters_missed_than_the_tail_holds_says_which_are_not_shown(
    browser: Any,
) -> None:
    """The same with 120 events of 9,000 characters each (1.08 million), fewer than the
    tail's blocks but more than its characters (MAX_TAIL_CHARS, 500,000): the page
    shows the newest that fit, after the line saying which are not shown, which stays
    in the tail, as does the first of those read."""
    big = "x" * 9000
    async with closed_while_the_page_is_away(
        browser, "behind-5", False, 120, lambda i: AgentEvent.custom("away", {"i": i, "t": big})
    ) as (page, problems, stored):
        last_seq = stored["last_seq"]
        tail = page.locator("#tail")
        await expect(tail).to_have_attribute("data-last-seq", str(last_seq))
        await expect(tail.locator(".ev-note").last).to_contain_text("Session closed")
        note = tail.locator(".ev-note", has_text="are not shown")
        await expect(note).to_have_count(1)
        text = await note.text_content()
        assert text is not None and text.startswith(f"Events 6{DASH}"), text
        shown_from = int(text.split(DASH)[1].split(" ")[0]) + 1
        after = note.locator("xpath=following-sibling::*[1]")
        await expect(after.locator(".seq")).to_have_text(f"#{shown_from}")
        chars = await tail.evaluate("el => el.textContent.length")
        await expect(page.locator("#tail-earlier")).to_have_count(0)  # nothing dropped
    assert 6 + 40 < shown_from < last_seq - 40  # some, not all, of the 120
    assert chars <= MAX_TAIL_CHARS
    assert problems == []


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([], id="empty"),
        pytest.param(
            [{"seq": 5, "ts": "2026-05-01T12:00:00Z", "event": {"type": "token", "content": "x"}}],
            id="stuck",
        ),
    ],
)
async def test_pages_of_events_that_stop_short_of_last_seq_are_said_to_be_missing(
    browser: Any, events: list[dict[str, Any]]
) -> None:
    """The page's reads of the events it missed are answered with pages that never
    reach the ``last_seq`` they state (what a server whose log lost them, or a cache
    between, could answer): empty, or holding no event after ``after_seq``. The page
    says that the events after seq 5 may be missing, after one read. Before, an empty
    page ended the read as if every event had come (the session shown as closed,
    nothing said of the missing ones), and a page of old events was asked for again,
    and again, with no end."""
    proxy = HttpProxy(0)
    # (fewer after seq 5 than the page reads at most: its first read asks for them)
    proxy.events_page = {"events": events, "last_seq": 200}
    async with closed_while_the_page_is_away(
        browser, f"short-{len(events)}", False, proxy=proxy
    ) as (
        page,
        problems,
        _,
    ):
        missing = page.locator("#status .notice-warning")
        await expect(missing).to_contain_text("events after #5 may be missing")
        await expect(page.locator("#tail")).to_have_attribute("data-last-seq", "5")
        await asyncio.sleep(0.5)
        assert proxy.events_reads == 1
    assert problems == []


async def test_a_session_replaced_while_the_page_was_away_and_live_says_so(browser: Any) -> None:
    """The session is deleted and created again under its id while the page is away, and
    the new one is still live when the page comes back: its resume is refused (another
    epoch) and it follows the new log. The tail says the session was replaced, and so
    does a notice with a Reload, then shows the new log's live events. Before, the tail
    said "Events 6-60 are no longer kept", as if the same log had been trimmed."""
    async with run_server() as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            async with await BambooClient.connect(
                ws_url(server), "relived", create=True, role="agent"
            ) as agent:
                for i in range(5):
                    await agent.publish(AgentEvent.token(f"a{i} "))
            page = await browser.new_page()
            problems = watch_page(page)
            await page.goto(console_url(port, "#/s/relived"))
            tail = page.locator("#tail")
            await expect(tail).to_have_attribute("data-last-seq", "5")
            proxy.cut()
            await server.manager.delete_session("relived")
            async with await BambooClient.connect(
                ws_url(server), "relived", create=True, role="agent"
            ) as agent:
                await asyncio.gather(
                    *(agent.publish(AgentEvent.token(f"new{i} ")) for i in range(60))
                )
                proxy.mend()
                await expect(page.locator("#status .notice-warning")).to_contain_text(
                    "was replaced"
                )
                await expect(tail.locator(".ev-note").last).to_contain_text("after its event #60")
                await agent.publish(AgentEvent.token("live-after "))
                await expect(tail).to_contain_text("live-after")
                await expect(tail).not_to_contain_text("no longer kept")
            caused = ("net::ERR_CONNECTION_RESET", "net::ERR_SOCKET_NOT_CONNECTED")
            assert [p for p in problems if not any(c in p for c in caused)] == []
        finally:
            await proxy.close()
