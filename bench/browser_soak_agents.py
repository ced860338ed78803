"""The browser soak's agents (bench/browser_soak.py): one Python ``BambooClient`` per
session, publishing as an agent runtime does, turn after turn: the user's message,
some thinking, tokens streamed at ``rate`` events a second (20 to 50 by default), now
and then a tool call whose arguments or result are large (up to ``LARGE_MAX`` bytes),
more tokens, ``complete``, then the assistant's message, and a pause.

Each agent connects to the server directly (not through the chaos proxy): what it was
acknowledged is what the pages must show. Every append carries a key, and an append
whose client ended is retried with the same key on a new client, so that nothing is
stored twice. ``acked`` maps each acknowledged seq to the event's *marker*
(:func:`marker`), a short ASCII string that names the event; the pages and the log are
compared through markers (bench/browser_soak_checks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from typing import Any

import msgspec

from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.events import TokenUsage, ToolResult

WORDS = ("the", "model", "reads", "a", "file", "then", "calls", "tool", "and", "answers")
# Bytes of a large tool call's arguments or result, drawn log-uniformly: below the
# server's 1 MiB frame limit with room for the frame around it.
LARGE_MIN, LARGE_MAX = 8_000, 400_000
LARGE_SHARE = 0.5  # the share of tool calls with a large argument or result
PAUSE = (1.0, 5.0)  # seconds between two turns


def marker(event: dict[str, Any]) -> str:
    """A short ASCII name of a logged event (a JSON object, as the wire has it), which
    the JavaScript follower page computes alike (bench/browser_soak_follower.js)."""
    kind = event.get("type")
    if kind in ("token", "thinking"):
        return f"{kind}:{event.get('content')}"
    if kind in ("tool_start", "tool_complete", "tool_error"):
        return f"{kind}:{event.get('tool_call_id')}"
    if kind == "message":
        return f"message:{(event.get('message') or {}).get('content', '')[:80]}"
    return str(kind)


def blob(rng: random.Random, label: str) -> str:
    """A large ASCII text, lines of words, of a log-uniform size."""
    size = int(LARGE_MIN * (LARGE_MAX / LARGE_MIN) ** rng.random())
    line = f"{label}: " + " ".join(rng.choice(WORDS) for _ in range(12)) + "\n"
    return (line * (size // len(line) + 1))[:size]


@dataclasses.dataclass
class Agent:
    """Publishes into ``session_id`` at ``url`` until ``stop`` is set."""

    session_id: str
    url: str
    rng: random.Random
    rate: tuple[float, float] = (20.0, 50.0)  # tokens a second, drawn per turn
    acked: dict[int, str] = dataclasses.field(default_factory=dict)  # seq: marker
    sent = 0  # appends made (each once acknowledged)
    large = 0  # large tool calls among them
    retries = 0  # appends retried on a new client
    clients = 0
    reconnects = 0
    client: BambooClient | None = None
    _count: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        try:
            while not stop.is_set():
                await self._turn(turn)
                turn += 1
                await self._sleep_until(stop, self.rng.uniform(*PAUSE))
        finally:
            if self.client is not None:
                self.reconnects += self.client.reconnects
                await self.client.close()

    async def _sleep_until(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _turn(self, turn: int) -> None:
        name = f"{self.session_id}-{turn}"
        rng = self.rng
        await self._message(Message.user(f"user {name}: what next?"))
        rate = rng.uniform(*self.rate)
        if rng.random() < 0.5:
            await self._stream("thinking", rng.randint(10, 60), rate)
        await self._stream("token", rng.randint(40, 300), rate)
        if rng.random() < 0.6:
            call = f"call-{name}"
            large = rng.random() < LARGE_SHARE
            self.large += large
            args: dict[str, Any] = {"path": f"/src/{name}.py"}
            if large and rng.random() < 0.5:
                args["content"] = blob(rng, "arg")
            await self._publish(AgentEvent.tool_start(call, "read_file", args))
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            result = blob(rng, "out") if large and "content" not in args else f"ok {name}"
            await self._publish(AgentEvent.tool_complete(call, ToolResult(True, result)))
            await self._stream("token", rng.randint(20, 200), rate)
        usage = TokenUsage(prompt_tokens=100, completion_tokens=self._count, total_tokens=0)
        await self._publish(AgentEvent.complete(usage))
        await self._message(Message.assistant(f"assistant {name}: done, {self._count} tokens"))

    async def _stream(self, kind: str, count: int, rate: float) -> None:
        """``count`` tokens (or thinking) at about ``rate`` a second: a publish, then a
        wait for the rest of its share of the second (none when the ack came late)."""
        make = AgentEvent.token if kind == "token" else AgentEvent.thinking
        for _ in range(count):
            started = time.monotonic()
            self._count += 1
            word = self.rng.choice(WORDS)
            prefix = "th" if kind == "thinking" else ""
            await self._publish(make(f"{prefix}{word}{self._count} "))
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

    async def _message(self, message: Message) -> None:
        await self._append(message, is_message=True)

    async def _publish(self, event: Any) -> None:
        await self._append(event, is_message=False)

    async def _append(self, item: Any, *, is_message: bool) -> None:
        """Appends ``item`` with a key of its own until acknowledged, on a new client
        when the one in use ended."""
        key = f"{self.session_id}:{self.sent}"
        while True:
            client = await self._client()
            try:
                if is_message:
                    seq = await client.send_message(item, key=key)
                else:
                    seq = await client.publish(item, key=key)
            except Exception:  # the client ended: the same key on a new one
                self.retries += 1
                self.reconnects += client.reconnects
                self.client = None
                await asyncio.sleep(0.2)
                continue
            break
        self.sent += 1
        # The marker of the event as the log has it (a message is logged as an event).
        wire = msgspec.to_builtins(item)
        self.acked[seq] = marker({"type": "message", "message": wire} if is_message else wire)

    async def _client(self) -> BambooClient:
        while self.client is None:
            try:
                self.client = await BambooClient.connect(
                    self.url, self.session_id, create=True, role="agent", receive_events=False,
                    title=f"soak {self.session_id}",
                )  # fmt: skip
                self.clients += 1
            except Exception:  # the server is down (a restart): again shortly
                await asyncio.sleep(0.2)
        return self.client
