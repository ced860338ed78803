"""What the tests of a threaded store whose files stop answering share
(tests/test_stalled_disks*.py, and others that stall a disk): the read deadline and
the bound of each wait, a GET over HTTP (and ``not_ready``, the first /readyz that says
so), a JSONL log turned into a FIFO nobody writes (``log_as_fifo``) and its reader
(``drain``), and another process that holds an SQLite file's locks (``holding``,
``write_lock_held``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bamboo_session.server.app import BambooServer

DEADLINE = 1.0
WITHIN = DEADLINE + 3.0  # bounds each wait: a reply that never comes fails the test


async def http_get(server: BambooServer, path: str) -> tuple[int, Any]:
    """A GET on its own socket (not in a thread: the test counts the threads' jobs);
    the status and the JSON body (or its text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        host = f"127.0.0.1:{server.port}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), WITHIN)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    json_body = b"application/json" in head
    return int(head.split()[1]), json.loads(body) if json_body else body.decode()


async def not_ready(server: BambooServer) -> tuple[int, Any]:
    """The first ``/readyz`` answer that is not 200 (status and body), asked for until
    one comes or ``WITHIN`` passes: an append held up reaches the store, and waits the
    read deadline, in turns of the loop that a busy machine spreads out."""
    deadline = asyncio.get_running_loop().time() + WITHIN
    while (answer := await http_get(server, "/readyz"))[0] == 200:
        assert asyncio.get_running_loop().time() < deadline, "still ready"
        await asyncio.sleep(0.05)
    return answer


@contextlib.contextmanager
def log_as_fifo(log: Path) -> Iterator[None]:
    """The log becomes a FIFO with no writer: whoever opens it waits. On exit the log
    is put back, then the FIFO gets a writer, which lets the waiting opens through
    (they read nothing: their callers gave up long ago)."""
    aside, fifo_aside = log.with_name(log.name + ".real"), log.with_name(log.name + ".fifo")
    log.rename(aside)
    os.mkfifo(log)
    try:
        yield
    finally:
        log.rename(fifo_aside)
        aside.rename(log)
        with contextlib.suppress(OSError):  # ENXIO: nobody is waiting on it
            os.close(os.open(fifo_aside, os.O_WRONLY | os.O_NONBLOCK))


def drain(fifo: Path) -> None:
    """Be the FIFO's reader until its writer is done (the probe writes a frame's worth
    of bytes, then fails to sync a FIFO). Opened without waiting for a writer: a probe
    waiting in its open counts as one already, and with none (a probe that never came
    here) the first read is the end, and the test fails rather than hangs."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(reader, True)
        while os.read(reader, 65536):
            pass
    finally:
        os.close(reader)


# Holds an SQLite database's write lock until killed (BEGIN IMMEDIATE).
HOLD_WRITE_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.asynccontextmanager
async def holding(script: str, path: Path | str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process runs ``script`` on ``path``: it says "held" once it holds its
    locks, and holds them until the block ends (it is killed, its locks go with it)."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), WITHIN) == b"held\n"
        yield holder
    finally:
        holder.kill()
        await holder.wait()


@contextlib.asynccontextmanager
async def write_lock_held(path: Path) -> AsyncIterator[None]:
    """Another process holds the SQLite database's write lock until the block ends."""
    async with holding(HOLD_WRITE_LOCK, path):
        yield
