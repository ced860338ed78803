"""The JavaScript client (/client/bamboo.js) in a real headless Chromium against a
broken or hostile server (or a man in the middle of ws://): a welcome it cannot use is
a refusal, not a connect that never settles, and an ack whose seq is no whole number
cannot hide a gap. Fake servers (websockets) play the server's part."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.support import run_server

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION = {"id": "fake", "connections": 1, "last_seq": 0}
WELCOME = {"type": "welcome", "connection_id": "c_1", "session": SESSION, "epoch": "e"}
WELCOME |= {"last_seq": 0, "resumed": False, "replay": 0}


@contextlib.asynccontextmanager
async def fake_server(frames: list[dict[str, Any]]) -> AsyncIterator[str]:
    """Answers a hello with ``frames`` (ignoring requests after it); yields its URL."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for frame in frames:
            await ws.send(json.dumps(frame))
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["bamboo.v1"]) as fake:  # type: ignore[list-item]
        yield f"ws://127.0.0.1:{next(iter(fake.sockets)).getsockname()[1]}"


async def client_page(browser: Any, app: str) -> Any:
    """A page of another origin with the client, from a real server, as ``window.bamboo``."""
    page = await browser.new_page()
    await page.goto(f"{app}/")
    async with run_server() as server:
        await page.evaluate(
            "async (url) => { window.bamboo = await import(url); }",
            f"http://127.0.0.1:{server.port}/client/bamboo.js",
        )
    return page


CONNECT = """async (url) => {
  const connecting = window.bamboo.BambooClient.connect(url, {
    sessionId: "fake", openTimeout: 2000, reconnect: false,
  }).then(() => ["connected"], (e) => [e.name, e.message]);
  const late = new Promise((resolve) => setTimeout(() => resolve(["still pending"]), 5000));
  return await Promise.race([connecting, late]);
}"""


@pytest.mark.parametrize(
    ("welcome", "problem"),
    [
        ({k: v for k, v in WELCOME.items() if k != "session"}, "no session"),
        ({**WELCOME, "session": None}, "no session"),
        ({**WELCOME, "session": {**SESSION, "id": "../x"}}, "no valid session id"),
        ({**WELCOME, "session": {**SESSION, "id": "other"}}, "session other, not fake"),
        ({k: v for k, v in WELCOME.items() if k != "epoch"}, "no epoch"),
        ({**WELCOME, "last_seq": "7"}, "no last_seq"),
    ],
)
async def test_a_welcome_it_cannot_use_is_a_refusal(
    browser: Any, app_origin: str, welcome: dict[str, Any], problem: str
) -> None:
    page = await client_page(browser, app_origin)
    async with fake_server([welcome]) as url:
        outcome = await page.evaluate(CONNECT, url)
    assert outcome == ["Refused", f"refused by the server (1008): malformed welcome: {problem}"]


async def test_an_ack_seq_that_is_no_whole_number_cannot_hide_a_gap(
    browser: Any, app_origin: str
) -> None:
    """Seq 0.5 once counted as seen: the check then let seq 2 go missing unnoticed."""

    def event(seq: int) -> dict[str, Any]:
        return {"type": "event", "seq": seq, "ts": "", "event": {"type": "token", "content": "t"}}

    frames = [WELCOME, {"type": "ack", "id": 1, "seq": 0.5}, event(1), event(3)]
    page = await client_page(browser, app_origin)
    async with fake_server(frames) as url:
        outcome = await page.evaluate(
            """async (url) => {
              const c = await window.bamboo.BambooClient.connect(url, { sessionId: "fake" });
              const publishing = c.publish({ type: "token", content: "x" }).catch((e) => e.name);
              const seen = [];
              const watching = (async () => {
                try {
                  for await (const item of c.events()) seen.push(item.seq);
                  return { seen, error: null };
                } catch (e) {
                  return { seen, error: [e.name, e.message], publish: await publishing };
                }
              })();
              const late = new Promise((resolve) => setTimeout(() => resolve({ seen }), 3000));
              const outcome = await Promise.race([watching, late]);
              await c.close();
              return outcome;
            }""",
            url,
        )
    assert outcome.get("error") == ["ClientError", "ack without a seq"], outcome
    assert outcome["publish"] == "ClientError"
    assert 3 not in outcome["seen"]
