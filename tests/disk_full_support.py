"""A real, small file system (a tmpfs) to run a server out of disk on, and publishers
that fill it: for the tests that check what a full disk does to a running server.
Mounting needs root: without it (or where mount is refused) the tests are skipped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

PADDING = 2000  # bytes of each filling event's content


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount_point``, unmounted (lazily: a killed server's
    files may still be open) at the end; the test skipped when it cannot be mounted."""
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def event_frame(key: str, padding: int) -> str:
    event = {"type": "token", "content": key + "." * padding}
    return json.dumps({"type": "event", "id": key, "key": key, "event": event})


async def fill_until_refused(url: str, name: str, acked: dict[str, int]) -> None:
    """Publishes padded keyed events, 8 in flight, until the server refuses some."""
    async with connect(url, open_timeout=10, close_timeout=1) as ws:
        await ws.send(json.dumps({"type": "hello", "create": True}))
        await ws.recv()
        for start in range(0, 20_000, 8):
            keys = [f"{name}-{index}" for index in range(start, start + 8)]
            for key in keys:
                await ws.send(event_frame(key, PADDING))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in keys]
            acked.update((r["id"], r["seq"]) for r in replies if r["type"] == "ack")
            refused = [r for r in replies if r["type"] != "ack"]
            if refused:
                assert all(r["code"] == "internal" for r in refused), refused
                return
    raise AssertionError("the disk never filled")
