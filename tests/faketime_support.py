"""libfaketime for the tests that run a server with its clocks moved (skipped without
it: apt-get install faketime): where the library is, and a :class:`ServerProcess`
set to run under it.

Such a server runs ``bench.faketime_server`` (the server's CLI with a sleep through
``select``): libfaketime 0.9.10 fails Python's ``time.sleep`` with EINVAL when it
leaves the monotonic clock alone, and a stop that sleeps (the JSONL store's wait for
its sync helper) exited 1 (the evidence: bench/faketime_server.py). Tests stop it
gracefully (SIGTERM, then its exit status), so that a stop bug under a moved clock
shows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.server_process import ServerProcess

LIBFAKETIME = next(
    (
        path
        for path in (
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/faketime/libfaketime.so.1",
            "/usr/local/lib/faketime/libfaketime.so.1",
        )
        if os.path.exists(path)
    ),
    None,
)
needs_libfaketime = pytest.mark.skipif(
    LIBFAKETIME is None, reason="needs libfaketime (apt-get install faketime)"
)


def under_faketime(server: ServerProcess, **settings: str) -> ServerProcess:
    """``server`` set to run under libfaketime with ``settings`` (``FAKETIME``,
    ``FAKETIME_TIMESTAMP_FILE``, ...), its monotonic clock left alone (as a machine
    whose clock is set wrong, or stepped, has it)."""
    server.env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        **settings,
    }
    server.module = "bench.faketime_server"
    return server


def set_offset(path: Path, seconds: int) -> None:
    """The faked clock's offset in a ``FAKETIME_TIMESTAMP_FILE``, written whole (the
    library reads it at every call with ``FAKETIME_NO_CACHE=1``)."""
    spare = path.with_suffix(".new")
    spare.write_text(f"{seconds:+d}\n")
    spare.replace(path)
