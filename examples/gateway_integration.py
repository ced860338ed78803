"""The seed's Gateway integration, over the wire: a gateway answers a chat request with
the session and its stream URL; an agent streams its answer into the session with
BambooClient; a viewer watches, drops mid-answer, reconnects with the position it had
(``last_seq`` + ``epoch``) and gets exactly the rest: no gap, no duplicate.

Run: ``python examples/gateway_integration.py [DATA_DIR] [--url ws://HOST:PORT]``.
Without ``--url`` a server is started in this process on a free port, storing in
DATA_DIR (a temporary directory by default). A store kept between runs (DATA_DIR, or
the server at ``--url``) gets a session of its own each run, ``chat-42-<8 hex digits>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bamboo_session.protocol import AgentEvent, Complete, Message, Token
from bamboo_session.protocol.client import BambooClient, Reset, StoredEvent, stream_url

ANSWER = [
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
    """Takes chat requests; hands out where to watch the answer."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url

    async def handle_chat(self, req: ChatRequest) -> ChatResponse:
        async with await BambooClient.connect(
            self.server_url, req.session_id, create=True, user_id=req.user_id, title=req.text
        ) as client:
            await client.send_message(Message.user(req.text))
            return ChatResponse(client.session_id, stream_url(self.server_url, client.session_id))


async def agent_answers(server_url: str, session_id: str) -> None:
    """The agent streams its answer token by token, then the whole message."""
    async with await BambooClient.connect(
        server_url, session_id, role="agent", receive_events=False
    ) as agent:
        for word in ANSWER:
            await agent.publish(AgentEvent.token(word + " "))
            await asyncio.sleep(0.01)
        await agent.send_message(Message.assistant(" ".join(ANSWER)))
        await agent.publish(AgentEvent.complete())


async def watch(client: BambooClient, seen: list[StoredEvent], stop_after: int | None) -> None:
    async for item in client.events():
        if isinstance(item, Reset):  # the log was lost: reload instead (not expected here)
            raise SystemExit(f"could not resume: {item}")
        seen.append(item)
        print(f"  viewer got seq={item.seq} {type(item.event).__name__}")
        if len(seen) == stop_after or isinstance(item.event, Complete):
            return


async def main(server_url: str, session_id: str = "chat-42") -> None:
    gateway = Gateway(server_url)
    response = await gateway.handle_chat(ChatRequest(session_id, "user-123", "Tell me a story"))
    print(f"stream at {response.stream_url}")

    # A viewer watches from the start of the session (last_seq=0 replays the whole log).
    seen: list[StoredEvent] = []
    viewer = await BambooClient.connect(server_url, response.session_id, last_seq=0)
    agent = asyncio.create_task(agent_answers(server_url, response.session_id))
    await watch(viewer, seen, stop_after=5)
    position = (viewer.last_seq, viewer.epoch)
    await viewer.close()  # the viewer's connection drops mid-answer
    print(f"viewer dropped after seq {position[0]}")

    await asyncio.sleep(0.05)  # the agent keeps streaming meanwhile
    last_seq, epoch = position
    async with await BambooClient.connect(
        server_url, response.session_id, last_seq=last_seq, epoch=epoch
    ) as viewer:
        print(f"viewer reconnected, resuming after seq {last_seq}")
        await watch(viewer, seen, stop_after=None)
    await agent

    seqs = [event.seq for event in seen]
    assert seqs == list(range(1, len(seqs) + 1)), f"gap or duplicate in {seqs}"
    tokens = "".join(e.event.content for e in seen if isinstance(e.event, Token))
    print(f"viewer saw seq 1..{seqs[-1]} with no gap: {tokens.strip()!r}")


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
        "chat-42" if url is None and data_dir is None else f"chat-42-{uuid.uuid4().hex[:8]}"
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
