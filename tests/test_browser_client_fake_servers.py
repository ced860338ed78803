"""The JavaScript client (/client/bamboo.js) in a real headless Chromium against fake
servers: the sequence check against one that skips or repeats a seq, and each close
code of the protocol's table, which resumes the client or ends it with its error.

Each test opens a blank page of another origin (a static server on another loopback
port) and imports the module from the server, as an application's page would."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.browser_client_support import client_page, serving

pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.asyncio(loop_scope="session")


@contextlib.asynccontextmanager
async def skipping_server(seqs: list[int]) -> AsyncIterator[int]:
    """A fake server that welcomes, then sends events with the given seqs."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        session = {"id": "fake", "connections": 1, "last_seq": 0}
        welcome = {"type": "welcome", "connection_id": "c_1", "session": session}
        await ws.send(json.dumps({**welcome, "epoch": "e", "last_seq": 0, "resumed": False}))
        for seq in seqs:
            event = {"type": "token", "content": str(seq)}
            await ws.send(json.dumps({"type": "event", "seq": seq, "ts": "", "event": event}))
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["bamboo.v1"]) as fake:  # type: ignore[list-item]
        yield next(iter(fake.sockets)).getsockname()[1]


@pytest.mark.parametrize(("seqs", "error"), [([1, 3], "gap"), ([1, 2, 2], "duplicate")])
async def test_an_impossible_sequence_throws(
    browser: Any, app_origin: str, seqs: list[int], error: str
) -> None:
    async with serving() as server, skipping_server(seqs) as fake_port:
        page = await client_page(browser, server.port, app_origin)
        outcome = await page.evaluate(
            """async (url) => {
              const c = await window.bamboo.BambooClient.connect(url, { sessionId: "fake" });
              const seen = [];
              try {
                for await (const item of c.events()) seen.push(item.seq);
                return { seen, error: null };
              } catch (e) {
                const error = [e.name, e.message, e.expected, e.got];
                return { seen, error, finished: c.finished };
              }
            }""",
            f"ws://127.0.0.1:{fake_port}",
        )
        assert outcome["error"][0] == "SequenceError"
        assert outcome["error"][1].startswith(error)
        assert outcome["finished"] is True
        assert outcome["seen"] == seqs[:-1]


RESUME_CODES = [1001, 1011, 1012, 1013, 4408, 4429]
FINAL_CODES = {
    1000: ["SessionEnded", 1000],
    4409: ["SessionEnded", 4409],
    1008: ["Refused", 1008],
    1009: ["Refused", 1009],
    4401: ["Unauthorized", 4401],
    4403: ["Forbidden", 4403],
    4404: ["NotFound", 4404],
    4000: ["Refused", 4000],
}


@contextlib.asynccontextmanager
async def closing_server(code: int) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A fake server: the first connection gets seq 1, then a close with ``code``; a
    later one is resumed with seq 2. Yields its port and the hellos it received."""
    hellos: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        hellos.append(json.loads(await ws.recv()))
        first = len(hellos) == 1
        session = {"id": "fake", "connections": 1, "last_seq": 1 if first else 2}
        welcome = {"type": "welcome", "connection_id": f"c_{len(hellos)}", "session": session}
        last_seq, replay = (0, 0) if first else (2, 1)
        resume = {"epoch": "e1", "last_seq": last_seq, "resumed": not first, "replay": replay}
        await ws.send(json.dumps({**welcome, **resume}))
        seq = 1 if first else 2
        event = {"type": "token", "content": f"t{seq}"}
        await ws.send(json.dumps({"type": "event", "seq": seq, "ts": "", "event": event}))
        if first:
            await ws.close(code, "test")
        else:
            with contextlib.suppress(Exception):
                await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["bamboo.v1"]) as fake:  # type: ignore[list-item]
        yield next(iter(fake.sockets)).getsockname()[1], hellos


async def test_close_codes_resume_or_end_the_client(browser: Any, app_origin: str) -> None:
    """Each close code of the protocol's table: a resumable one reconnects and resumes
    from the last seq seen and its epoch; any other ends the client with its error, and
    its ``"closed"`` state change names that close (code and reason), as the one after
    the page's own ``close()`` names it (1000, "client closed")."""
    async with serving() as server:
        page = await client_page(browser, server.port, app_origin)
        watch = """async (url) => {
          const c = await window.bamboo.BambooClient.connect(url, {
            sessionId: "fake", create: true, backoffInitial: 10,
          });
          const seqs = [];
          let closed = null;
          c.on("state", ({ state, code, reason }) => {
            if (state === "closed") closed = [code, reason];
          });
          try {
            for await (const item of c.events()) {
              seqs.push(item.seq);
              if (item.seq === 2) break;
            }
          } catch (error) {
            return { seqs, error: [error.name, error.code], closed };
          }
          const ended = c.error && [c.error.name, c.error.code];
          await c.close();
          return { seqs, reconnects: c.reconnects, ended, closed };
        }"""
        for code in RESUME_CODES:
            async with closing_server(code) as (port, hellos):
                outcome = await page.evaluate(watch, f"ws://127.0.0.1:{port}")
            assert outcome == {
                "seqs": [1, 2],
                "reconnects": 1,
                "ended": None,
                "closed": [1000, "client closed"],
            }, code
            assert hellos[0]["create"] is True and "last_seq" not in hellos[0]
            assert hellos[1]["create"] is False, code
            assert (hellos[1]["last_seq"], hellos[1]["epoch"]) == (1, "e1"), code
        for code, error in FINAL_CODES.items():
            async with closing_server(code) as (port, hellos):
                outcome = await page.evaluate(watch, f"ws://127.0.0.1:{port}")
            closed = [code, "test"]  # the fake server's reason
            if error[0] == "SessionEnded":  # events() just ends
                assert outcome == {
                    "seqs": [1],
                    "reconnects": 0,
                    "ended": error,
                    "closed": closed,
                }, code
            else:
                assert outcome == {"seqs": [1], "error": error, "closed": closed}, code
            assert len(hellos) == 1, code
