"""A burst's memory comes back to the system once its peers are gone (server/
memory_return.py), seen from outside a real ``serve`` process: its resident size
(``VmRSS``) rises while a hundred peers each hold a 1 MiB frame queued behind a page
waiting for their read allowance, and falls back near where it began after they
close. Before, glibc kept the freed blocks in its heap and the process stayed at its
peak; here the heap's free bytes, looked at in this test process, are trimmed too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.server.memory_return import free_in_heap, return_free_memory
from bench.queued_frames_memory import fill
from tests.server_process import ServerProcess, assert_no_tracebacks

PEERS = 120
BIG_SESSIONS = 2  # each with a log longer than a page, so that every page is 1 MiB
WAIT = 60.0  # only a guard against a hang


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _holding_peer(server: ServerProcess, session_id: str, ready: asyncio.Event) -> None:
    """Asks for 1 MiB pages faster than its peer's allowance gives them, with a 1 MiB
    frame behind them: the server holds the frame while the page waits."""
    async with connect(server.url(session_id), max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await ws.recv()
        await ws.send(json.dumps({"type": "events", "id": "first", "after_seq": 0}))
        await ws.send(json.dumps({"type": "events", "id": "big", "pad": "y" * 1_000_000}))
        for number in range(4):
            await ws.send(json.dumps({"type": "events", "id": number, "pad": "z" * 60_000}))
        reader = asyncio.create_task(_read_all(ws))
        await ready.wait()
        reader.cancel()


async def _read_all(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


async def test_the_memory_a_burst_of_peers_held_comes_back_after_they_close(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        pid = server.proc.pid  # type: ignore[union-attr]
        sessions = [f"big{number}" for number in range(BIG_SESSIONS)]
        await asyncio.gather(*(fill(server.port, session_id) for session_id in sessions))
        before = resident_mib(pid)
        done = asyncio.Event()
        peers = [
            asyncio.create_task(_holding_peer(server, sessions[n % BIG_SESSIONS], done))
            for n in range(PEERS)
        ]
        peak = before
        deadline = time.monotonic() + WAIT
        while peak < before + PEERS / 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            peak = max(peak, resident_mib(pid))
        assert peak >= before + PEERS / 2, (before, peak)  # the burst held its frames
        done.set()
        await asyncio.gather(*peers)
        # Back to within a third of the rise (glibc kept 90% or more of it before),
        # within a few of the server's looks at its heap.
        deadline = time.monotonic() + WAIT
        after = resident_mib(pid)
        while after > before + (peak - before) / 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            after = resident_mib(pid)
        assert after <= before + (peak - before) / 3, (before, peak, after)
        assert server.stop() == 0
        assert_no_tracebacks(server.log_records())


@pytest.mark.skipif(free_in_heap() is None, reason="not glibc: nothing to look at")
def test_the_heap_is_trimmed_only_past_its_free_bytes_bound() -> None:
    blocks = [bytearray(1 << 20) for _ in range(64)]
    del blocks[:-1]  # 63 MiB freed below the last block: glibc keeps it
    free = free_in_heap()
    assert free is not None
    assert not return_free_memory(above=free + (1 << 30))  # below the bound: left
    assert return_free_memory(above=0)
