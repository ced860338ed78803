"""The seed's basic example, line by line: open a JSONL storage with a 24-hour TTL,
create a session, append a message, load the session back.

Run: ``python examples/basic_usage.py [DATA_DIR]``. The data directory comes from the
argument, else ``$BAMBOO_DATA_DIR``, else a fresh temporary directory. Or on any backend
by its URL: ``python examples/basic_usage.py --store sqlite:///tmp/bamboo.db``. Run
again on the same store, it adds another message to the session the first run made.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionExists,
    Storage,
    open_storage,
)
from bamboo_session.protocol import Message, Session


async def main(data_dir: str, store_url: str | None = None) -> None:
    # Create the storage
    if store_url is None:
        config = JsonlStorageConfig.new(data_dir).with_default_ttl(86400)  # expires after 24 hours

        storage: Storage = await JsonlStorage.open(config)
    else:  # any backend by its URL, e.g. sqlite:///var/lib/bamboo/sessions.db
        storage = await open_storage(store_url, default_ttl=86400)

    # Create a session
    session = Session.new("session-001").with_user_id("user-123").with_title("My Chat")

    try:
        await storage.create_session(session)
    except SessionExists:  # a rerun on the same store: the earlier run's session is kept
        print(f"{session.metadata.id} is in this store from an earlier run: adding to it")

    # Add a message
    await storage.append_message(
        session.metadata.id,
        Message.user("Hello!"),
    )

    # Load the session
    loaded = await storage.load_session("session-001")

    assert loaded is not None
    print(f"session {loaded.metadata.id} ({loaded.metadata.title}) of {loaded.metadata.user_id}")
    for message in loaded.messages:
        print(f"  {message.role.value}: {message.content}")
    print(f"expires at {loaded.metadata.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", help="the JSONL store's directory")
    parser.add_argument("--store", help="a store's URL instead, e.g. sqlite:///tmp/bamboo.db")
    args = parser.parse_args()
    data_dir = args.data_dir or os.environ.get("BAMBOO_DATA_DIR")
    asyncio.run(main(data_dir or tempfile.mkdtemp(prefix="bamboo-example-"), args.store))
