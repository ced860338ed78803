"""The seed's Gateway integration, in Python: a gateway serves a chat flow on top of
SessionManager. A chat request gets (or creates) the session and a stream URL; an agent
streams its answer into the session; the viewer drops mid-answer, reconnects with the
last seq it saw, and gets exactly the rest.

Run: ``python examples/gateway_integration.py [DATA_DIR]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent, Complete, Message, StoredEvent, Token
from bamboo_session.server.manager import Receiver, SessionManager, SessionManagerConfig


@dataclass
class ChatRequest:
    session_id: str
    user_id: str
    text: str


@dataclass
class ChatResponse:
    session_id: str
    stream_url: str


class Gateway:
    def __init__(self, session_manager: SessionManager) -> None:
        self.session_manager = session_manager

    async def handle_chat(self, req: ChatRequest) -> ChatResponse:
        session = await self.session_manager.get_or_create_session(req.session_id, req.user_id)
        await self.session_manager.add_message(session.metadata.id, Message.user(req.text))
        return ChatResponse(
            session_id=session.metadata.id,
            stream_url=f"/api/v1/stream/{session.metadata.id}",
        )

    async def handle_stream(self, session_id: str, conn_id: str) -> Receiver:
        # A new viewer gets the whole session so far (last_seq=0), then live events.
        return await self.session_manager.connect_session(session_id, conn_id, last_seq=0)

    async def handle_reconnect(self, session_id: str, conn_id: str, last_seq: int) -> Receiver:
        return await self.session_manager.reconnect_session(session_id, conn_id, last_seq)


async def agent_answers(manager: SessionManager, session_id: str, words: list[str]) -> None:
    for word in words:
        await manager.append_event(session_id, AgentEvent.token(word + " "))
        await asyncio.sleep(0.01)
    await manager.add_message(session_id, Message.assistant(" ".join(words)))
    await manager.append_event(session_id, AgentEvent.complete())


async def main(data_dir: str) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(data_dir))
    manager = await SessionManager.new(SessionManagerConfig(), storage)
    gateway = Gateway(manager)

    response = await gateway.handle_chat(ChatRequest("chat-42", "user-123", "Tell me a story"))
    print(f"stream at {response.stream_url}")
    stream = await gateway.handle_stream(response.session_id, "viewer-1")
    words = [
        "once",
        "upon",
        "a",
        "time",
        "there",
        "was",
        "a",
        "session",
        "that",
        "never",
        "lost",
        "a",
        "token",
    ]
    agent = asyncio.create_task(agent_answers(manager, response.session_id, words))

    seen: list[StoredEvent] = []
    async for event in stream:
        seen.append(event)
        if len(seen) == 4:
            break  # the viewer's connection drops mid-answer
    await manager.disconnect_session(response.session_id, "viewer-1")
    print(f"dropped after seq {seen[-1].seq}")

    await asyncio.sleep(0.05)  # the agent keeps streaming meanwhile
    stream = await gateway.handle_reconnect(response.session_id, "viewer-2", seen[-1].seq)
    async for event in stream:
        seen.append(event)
        if isinstance(event.event, Complete):
            break
    await agent

    seqs = [event.seq for event in seen]
    assert seqs == list(range(1, len(seqs) + 1)), f"gap or duplicate in {seqs}"
    tokens = "".join(e.event.content for e in seen if isinstance(e.event, Token))
    print(f"viewer saw seq 1..{seqs[-1]} with no gap: {tokens.strip()!r}")
    await manager.close()
    await storage.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as default_dir:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else default_dir))
