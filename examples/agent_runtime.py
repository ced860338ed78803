"""An agent runtime on BambooClient: a fake agent waits for the user's message, then
streams its thinking, tokens, a tool call (``tool_start`` / ``tool_complete``) and a
completion into the session, while a chat UI renders the stream live.

Every event the agent publishes carries an idempotency key derived from the turn and
the step (``turn-1:7``). So if the agent crashes mid-turn and runs the turn again, what
was already stored is not stored twice: the example reruns the whole turn at the end
and shows that nothing new is appended.

Run: ``python examples/agent_runtime.py [DATA_DIR] [--url ws://HOST:PORT]``. Without
``--url`` a server is started in this process on a free port, storing in DATA_DIR (a
temporary directory by default). A store kept between runs (DATA_DIR, or the server at
``--url``) gets a session of its own each run, ``agent-demo-<8 hex digits>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bamboo_session.protocol import (
    AgentEvent,
    AnyAgentEvent,
    Complete,
    Message,
    MessageEvent,
    Role,
    Thinking,
    Token,
    TokenUsage,
    ToolCall,
    ToolComplete,
    ToolResult,
    ToolStart,
)
from bamboo_session.protocol.client import BambooClient, Reset


async def get_weather(city: str) -> dict[str, Any]:
    """The agent's one tool, faked."""
    await asyncio.sleep(0.02)
    return {"city": city, "forecast": "sunny", "high_c": 24}


class FakeAgent:
    """Answers a user's message as an LLM agent would, one event at a time."""

    def __init__(self, client: BambooClient) -> None:
        self.client = client
        self.appended = 0  # events this agent stored (not duplicates of earlier runs)
        self.turns: list[tuple[str, str]] = []  # (turn id, prompt) answered

    async def run_turn(self, turn_id: str, prompt: str) -> None:
        self.turns.append((turn_id, prompt))
        steps = itertools.count(1)
        highest = self.client.last_seq

        async def emit(event: AnyAgentEvent | Message) -> None:
            nonlocal highest
            key = f"{turn_id}:{next(steps)}"  # the same step gets the same key on a rerun
            if isinstance(event, Message):
                seq = await self.client.send_message(event, key=key)
            else:
                seq = await self.client.publish(event, key=key)
            if seq > highest:  # a duplicate answers with the seq stored the first time
                self.appended += 1
                highest = seq

        await emit(AgentEvent.thinking(f"The user asks: {prompt!r}. I need the forecast."))
        intro = "Let me check the forecast."
        for word in intro.split():
            await emit(AgentEvent.token(word + " "))
        call = ToolCall(id=f"{turn_id}-call-1", name="get_weather", arguments={"city": "Paris"})
        await emit(Message.assistant_with_tools(intro, [call]))
        await emit(AgentEvent.tool_start(call.id, call.name, call.arguments))
        result = await get_weather("Paris")
        await emit(AgentEvent.tool_complete(call.id, ToolResult(True, json.dumps(result))))
        await emit(Message.tool(call.id, json.dumps(result)))
        answer = f"It will be {result['forecast']} in Paris, up to {result['high_c']} °C."
        for word in answer.split():
            await emit(AgentEvent.token(word + " "))
            await asyncio.sleep(0.005)
        await emit(Message.assistant(answer))
        words = len(intro.split()) + len(answer.split())
        await emit(AgentEvent.complete(TokenUsage(42, words, 42 + words)))

    async def serve(self) -> None:
        """Wait for a user's message; answer it; return after one turn."""
        async for item in self.client.events():
            if isinstance(item, Reset):
                continue  # a real runtime would reload the history here
            event = item.event
            if isinstance(event, MessageEvent) and event.message.role == Role.USER:
                await self.run_turn(f"turn-{item.seq}", event.message.content)
                return


def render(event: AnyAgentEvent) -> str | None:
    """How a chat UI shows each event (None: not shown)."""
    match event:
        case Token(content=content):
            return content
        case Thinking(content=content):
            return f"\n  (thinking: {content})\n"
        case ToolStart(tool_name=name, arguments=arguments):
            return f"\n  [tool_start {name}({json.dumps(arguments)})]"
        case ToolComplete(result=result):
            return f"\n  [tool_complete -> {result.content}]\n"
        case Complete(usage=usage):
            total = usage.total_tokens if usage else 0
            return f"\n  [complete: {total} tokens]\n"
        case MessageEvent(message=message) if message.role == Role.USER:
            return f"user: {message.content}\nagent: "
    return None


async def chat_ui(server_url: str, session_id: str, prompt: str) -> list[int]:
    """Sends the user's message, renders the answer live; the seqs it saw."""
    seqs: list[int] = []
    async with await BambooClient.connect(server_url, session_id) as ui:
        await ui.send_message(Message.user(prompt))
        print(f"user: {prompt}\nagent: ", end="", flush=True)
        async for item in ui.events():
            assert not isinstance(item, Reset)
            seqs.append(item.seq)
            if (text := render(item.event)) is not None:
                print(text, end="", flush=True)
            if isinstance(item.event, Complete):
                return seqs
    return seqs


async def main(server_url: str, session_id: str = "agent-demo") -> None:
    agent_client = await BambooClient.connect(server_url, session_id, create=True, role="agent")
    agent = FakeAgent(agent_client)
    serving = asyncio.create_task(agent.serve())
    seen = await chat_ui(server_url, session_id, "What's the weather in Paris tomorrow?")
    await serving
    await agent_client.close()
    print(f"ui saw seq {seen[0]}..{seen[-1]}; the agent stored {agent.appended} events")

    # The agent "crashes" and runs the same turn again: the keys make it a no-op.
    async with await BambooClient.connect(server_url, session_id, role="agent") as restarted:
        before = (await restarted.read_events(limit=1)).last_seq
        rerun = FakeAgent(restarted)
        turn_id, prompt = agent.turns[0]  # what a real runtime would find in its own log
        await rerun.run_turn(turn_id, prompt)
        after = (await restarted.read_events(limit=1)).last_seq
        print(f"rerun of the turn: {rerun.appended} new events (log still ends at seq {after})")
        assert rerun.appended == 0 and before == after

        history = await restarted.history()
        print("history:")
        for message in history.messages:
            calls = [call.name for call in message.tool_calls or ()]
            print(f"  {message.role.value}: {message.content}" + (f" {calls}" if calls else ""))
        await restarted.set_state("closed")


@contextlib.asynccontextmanager
async def local_server(data_dir: str) -> AsyncIterator[str]:
    """A server in this process on a free loopback port; yields its URL."""
    from bamboo_session.server.app import BambooServer
    from bamboo_session.server.config import ServerConfig
    from bamboo_session.server.logs import configure_logging

    configure_logging("console", "warning")
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir)
    async with BambooServer(config) as server:
        yield f"ws://127.0.0.1:{server.port}"


async def run(data_dir: str | None, url: str | None) -> None:
    # A shared server, or a DATA_DIR, keeps the sessions of earlier runs: a fresh one
    # each run there, so that a rerun does not meet the last run's session.
    session_id = (
        "agent-demo" if url is None and data_dir is None else f"agent-demo-{uuid.uuid4().hex[:8]}"
    )
    if url is not None:
        await main(url, session_id)
        return
    with tempfile.TemporaryDirectory() as default_dir:
        async with local_server(data_dir or default_dir) as local_url:
            await main(local_url, session_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", help="data directory of the local server")
    parser.add_argument("--url", help="use a running server instead, e.g. ws://127.0.0.1:8765")
    args = parser.parse_args()
    asyncio.run(run(args.data_dir, args.url))
