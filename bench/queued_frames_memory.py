"""How much memory do peers whose frames wait behind a page take from a server, beside
``--memory-budget``, and does it come back once they close?

Each peer attaches to one of a few sessions whose logs are longer than a page, asks
for the log (``events``: a 1 MiB page), then sends a frame of about 1 MiB and a few
of 60 KB behind it (``events`` requests padded with a field the server ignores: no
append, nothing fanned out). The pages of all peers together go past the address's
read allowance (64 MiB at once, 32 MiB a second), so each peer's request waits, and
the frames behind it wait in the server, read and not handled: websockets' incoming
queue and the read held behind it, up to some 1.3 MiB a connection
(docs/protocol.md, Limits), outside the budget and with no total for the process but
``--max-connections``. Each peer reads what it is sent, and closes after ``--hold``
seconds.

Printed: the server's RSS before, its peak (VmHWM), its RSS ``--after`` seconds
after the peers closed, and two RATIOs: the peak's growth over the budget, and what
of the growth was still held after.

    nice .venv/bin/python -m bench.queued_frames_memory --peers 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect

from bench.common import HOST, bamboo_server, ratio_line, rss_kib, run, workdir
from bench.fragment_memory import peak_kib

PEERS_PER_SESSION = 200  # under --max-session-connections (256)


async def fill(port: int, session_id: str) -> None:
    """A log of 1.5 MB: every page of it is a whole page (1 MiB)."""
    async with connect(f"ws://{HOST}:{port}/api/v1/stream/{session_id}", max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "create": True}))
        await ws.recv()
        for number in range(6):
            event = {"type": "token", "content": "x" * 250_000}
            await ws.send(json.dumps({"type": "event", "id": number, "event": event}))
        acks = 0
        while acks < 6:
            acks += json.loads(await ws.recv())["type"] == "ack"


async def peer(port: int, session_id: str, hold: float) -> str:
    """One peer's frames behind its page; how it ended."""
    try:
        async with connect(
            f"ws://{HOST}:{port}/api/v1/stream/{session_id}",
            max_size=None,
            ping_interval=None,
            open_timeout=60,
        ) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            await ws.recv()
            await ws.send(json.dumps({"type": "events", "id": "page", "after_seq": 0}))
            await ws.send(json.dumps({"type": "events", "id": "big", "pad": "y" * 1_000_000}))
            for number in range(4):
                await ws.send(json.dumps({"type": "events", "id": number, "pad": "z" * 60_000}))
            try:
                async with asyncio.timeout(hold):
                    async for _ in ws:
                        pass
            except TimeoutError:
                return "held"
            return f"closed {ws.close_code}"
    except Exception as exc:  # a refusal or a drop is an outcome to count, not a failure
        return type(exc).__name__


async def main(args: argparse.Namespace) -> None:
    with workdir("queued-frames") as tmp:
        budget = args.memory_budget
        server = bamboo_server(
            tmp / "data", tmp / "server.log", "--durability", "os", "--memory-budget", str(budget)
        )
        server.start()
        try:
            sessions = [f"big{n}" for n in range((args.peers - 1) // PEERS_PER_SESSION + 1)]
            await asyncio.gather(*(fill(server.port, s) for s in sessions))
            before = rss_kib(server.pid)
            started = time.monotonic()
            ends = await asyncio.gather(
                *(
                    peer(server.port, sessions[n % len(sessions)], args.hold)
                    for n in range(args.peers)
                )
            )
            seconds = time.monotonic() - started
            peak = peak_kib(server.pid)
            await asyncio.sleep(args.after)
            after = rss_kib(server.pid)
        finally:
            server.terminate()
    print(
        f"{args.peers} peers, {len(sessions)} sessions, {seconds:.1f} s, budget {budget >> 20} MiB"
    )
    print(f"server RSS before {before >> 10} MiB, peak {peak >> 10} MiB, after {after >> 10} MiB")
    for end in sorted(set(ends)):
        print(f"  {ends.count(end)} {end}")
    growth = max(1, peak - before)
    print(ratio_line("queued_frames_memory", "peak_growth_per_budget", growth * 1024 / budget, "-"))
    print(
        ratio_line("queued_frames_memory", "held_after_per_growth", (after - before) / growth, "-")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=400)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each peer stays")
    parser.add_argument("--after", type=float, default=25.0, help="seconds, then RSS again")
    parser.add_argument("--memory-budget", type=int, default=256 << 20)
    run(main(parser.parse_args()))
