"""How long a follower that stalls now and then waits to resume (h425): the Python
client's reconnect backoff after connections that did useful work.

One session on a Bamboo server (a subprocess); an agent publishes small tokens at a
steady ``--rate``; a follower (``BambooClient``, ``max_queued_events`` 64, keepalive
``--ping`` s for Ping and Pong) reads for ``--read`` s, then its application stalls for
``--stall`` s, ``--cycles`` times. In each stall its events queue fills, the client stops
reading its socket, the Pong waits unread behind the events and its own keepalive drops
the connection (each lives a few seconds, under the backoff's 10 s ``STABLE_AFTER``,
though it delivered events); the client sees the drop once the application reads the
queue down, and resumes after a backoff. The figure: per stall, seconds from its end
until ``client.connected`` is True again (0 when the connection was not dropped; the
application reads on meanwhile), and the drops (``client.reconnects``).

The same script run from two trees (each with its own ``PYTHONPATH``) compares their
clients, in one shell invocation, alternated::

    python -m bench.stalled_follower --json bench/out/stalled_follower.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient

from . import common

SESSION = "stalled-follower"
# Seconds a stall's end waits for the resume at most: the backoff's ceiling (5 s) and a
# loaded machine's connect, well past.
RESUME_BOUND = 30.0


async def publish_steadily(agent: BambooClient, rate: float, stop: asyncio.Event) -> int:
    """Tokens at ``rate`` a second until ``stop``; how many were acknowledged."""
    sent = 0
    while not stop.is_set():
        await agent.publish(Token(f"t{sent}"))
        sent += 1
        await asyncio.sleep(1 / rate)
    return sent


async def read_for(client: BambooClient, seconds: float) -> int:
    """Takes events for ``seconds``; how many."""
    taken = 0
    events = client.events()
    with_deadline = asyncio.get_running_loop().time() + seconds
    try:
        async with asyncio.timeout_at(with_deadline):
            async for _ in events:
                taken += 1
    except TimeoutError:
        pass
    return taken


async def follow(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The stalls and, for each, the seconds from its end until connected again."""
    waits: list[float] = []
    taken = 0
    async with await BambooClient.connect(
        url, SESSION, last_seq=0, max_queued_events=64,
        ping_interval=args.ping, ping_timeout=args.ping,
    ) as client:  # fmt: skip
        taken += await read_for(client, args.read)
        for _ in range(args.cycles):
            await asyncio.sleep(args.stall)  # the application stalls
            ended = time.monotonic()
            reading = asyncio.ensure_future(read_for(client, args.read))
            while not client.connected and time.monotonic() - ended < RESUME_BOUND:  # noqa: ASYNC110 - polls the client
                await asyncio.sleep(0.005)
            waits.append(time.monotonic() - ended)
            taken += await reading
        return {"waits": waits, "drops": client.reconnects, "taken": taken}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with common.workdir("stalled") as tmp:
        server = common.bamboo_server(tmp / "data", tmp / "server.log").start()
        try:
            url = f"ws://{common.HOST}:{server.port}"
            async with await BambooClient.connect(
                url, SESSION, create=True, role="agent", receive_events=False
            ) as agent:
                stop = asyncio.Event()
                publishing = asyncio.ensure_future(publish_steadily(agent, args.rate, stop))
                try:
                    result = await follow(url, args)
                finally:
                    stop.set()
                    result_published = await publishing
        finally:
            server.terminate()
    waits = sorted(result["waits"])
    return {
        "published": result_published,
        "taken": result["taken"],
        "drops": result["drops"],
        "waits_s": [round(w, 3) for w in result["waits"]],
        "median_wait_s": round(statistics.median(waits), 3),
        "max_wait_s": round(waits[-1], 3),
        "total_wait_s": round(sum(waits), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=8, help="stalls")
    parser.add_argument("--stall", type=float, default=2.0, help="seconds each stall lasts")
    parser.add_argument("--read", type=float, default=1.5, help="seconds read between stalls")
    parser.add_argument("--rate", type=float, default=200.0, help="events a second")
    parser.add_argument("--ping", type=float, default=0.5, help="the follower's keepalive")
    common.add_common_args(parser)
    args = parser.parse_args()
    results = common.run(main_async(args))
    print(results)
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
