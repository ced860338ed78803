"""A child process for tests/test_jsonl_clock_mark.py (run as a script, not collected):
a real server on the JSONL store at DIR whose checkpoints wait an hour
(``checkpoint_interval``), so that the state moves it writes lazily (a park at a
peer's close, an attach's ``active``) are still in memory only when the parent kills it
(SIGKILL). ``python tests/clock_mark_child.py DIR PORT_FILE``: writes its port to
PORT_FILE once listening."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bamboo_session.persistence import JsonlStorage
from bamboo_session.persistence.jsonl.config import JsonlStorageConfig
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig


async def serve(directory: Path, port_file: Path) -> None:
    config = JsonlStorageConfig(directory, checkpoint_interval=3600.0, cleanup_interval=None)
    storage = await JsonlStorage.open(config)
    server_config = ServerConfig(
        host="127.0.0.1", port=0, log_format="json", rate_limit=0, store=f"jsonl://{directory}"
    )
    async with BambooServer(server_config, storage) as server:
        spare = port_file.with_suffix(".new")  # whole when the parent reads it
        spare.write_text(str(server.port))
        spare.replace(port_file)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2])))
