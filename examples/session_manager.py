"""The seed's SessionManager example, in Python: create a session, connect a receiver,
add a message and an event, and receive both.

Run: ``python examples/session_manager.py [DATA_DIR]`` (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.server.manager import SessionManager, SessionManagerConfig


async def main(data_dir: str) -> None:
    # Create the storage
    storage = await JsonlStorage.open(JsonlStorageConfig(data_dir))

    # Create the SessionManager
    manager = await SessionManager.new(SessionManagerConfig(), storage)

    # Create a session
    session = await manager.create_session("user-123", "Chat Title")

    # Connect to the session (returns an event receiver)
    event_rx = await manager.connect_session(session.metadata.id, "conn-001")

    # Add a message
    await manager.add_message(session.metadata.id, Message.user("Hello!"))

    # Send an event
    await manager.append_event(session.metadata.id, AgentEvent.token("Hi!"))

    # Receive events
    async for event in event_rx:
        print(f"seq={event.seq} {event.event!r}")
        if event.seq == 2:
            break

    await manager.close()
    await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", help="the JSONL store's directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as default_dir:
        asyncio.run(main(args.data_dir or default_dir))
