"""The agent side of the browser example: attaches to a session as an agent and answers
every user message by streaming ``You said: …`` word by word as ``token`` events, then
the whole reply as an assistant message, then ``complete``.

Every publish carries a key derived from the user's message id, so an agent restarted
mid-reply re-publishes nothing twice.

Run: ``python examples/browser/echo_agent.py [--url ws://127.0.0.1:8765] [--session demo]``
"""

from __future__ import annotations

import argparse
import asyncio

from bamboo_session.protocol import AgentEvent, Message, MessageEvent
from bamboo_session.protocol.client import BambooClient, StoredEvent


async def run_echo_agent(url: str, session_id: str, word_delay: float = 0.05) -> None:
    """Answers user messages in ``session_id`` until the session is closed."""
    async with await BambooClient.connect(
        url, session_id, create=True, role="agent", title="Browser example"
    ) as agent:
        async for item in agent.events():
            if not isinstance(item, StoredEvent) or not isinstance(item.event, MessageEvent):
                continue
            message = item.event.message
            if message.role != "user":
                continue
            reply = f"You said: {message.content}"
            for i, word in enumerate(reply.split(" ")):
                token = word if i == 0 else f" {word}"
                await agent.publish(AgentEvent.token(token), key=f"{message.id}:{i}")
                await asyncio.sleep(word_delay)
            await agent.send_message(Message.assistant(reply), key=f"{message.id}:reply")
            await agent.publish(AgentEvent.complete(), key=f"{message.id}:done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server (%(default)s)")
    parser.add_argument("--session", default="demo", help="the session to answer in (%(default)s)")
    args = parser.parse_args()
    asyncio.run(run_echo_agent(args.url, args.session))


if __name__ == "__main__":
    main()
