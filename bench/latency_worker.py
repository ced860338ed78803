"""One driver process of the latency bench for Bamboo and the relay: its share of the
sessions, offered at its share of the rate from a start common to every driver.

Run by bench/latency.py (``python -m bench.latency_worker``), never by hand: it speaks
the JSON lines of bench/workers.py on stdin/stdout. Config: ``kind`` ("bamboo" or
"relay"), ``url`` (ws://host:port), ``sessions`` (names), ``rate`` (this process's
events/s), ``seconds``, ``warmup``, ``samples_path`` (where the latencies go, native
float64 seconds), ``codec`` ("json", or "msgpack": Bamboo's agents publish in
MessagePack; viewers read JSON). The Socket.IO peer has the same driver in bench/socketio/driver.js.
"""

from __future__ import annotations

import array
import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common
from .peers import bamboo_attach, decode_frame, open_ws, timed_frame, timed_frame_packed

CONNECT_CONCURRENCY = 50
TICK = 0.001  # the scheduler wakes this often and sends every event that is due
STRAGGLER_WAIT = 5.0  # how long events still in flight after the last send are awaited


async def drain(ws: ClientConnection) -> None:
    """Read and drop what an agent gets back (acks): a real agent reads them too."""
    while True:
        await ws.recv(decode=False)


async def watch(ws: ClientConnection, latencies: array.array[float], measure_from: float) -> None:
    while True:
        data = await ws.recv(decode=False)
        arrived = time.perf_counter()
        frame = decode_frame(data)
        if frame.type != "event" or frame.event is None or frame.event.data is None:
            continue
        sent = frame.event.data.t
        if sent >= measure_from:
            latencies.append(arrived - sent)


class Offer:
    """The open loop: ``rate`` events a second for ``seconds`` from ``start``,
    round-robin over the agents, each stamped with its scheduled send time."""

    def __init__(
        self, rate: float, seconds: float, start: float, measure_from: float, msgpack: bool
    ) -> None:
        self.rate = rate
        self.msgpack = msgpack  # the agents publish in MessagePack (binary frames)
        self.start = start
        self.measure_from = measure_from
        self.total = int(rate * seconds)
        self.sent = 0
        self.expected = 0  # events scheduled after the warm-up: one sample each
        self.send_lags: array.array[float] = array.array("d")
        self.last_send = start
        self.cpu_seconds = 0.0  # this process's CPU while sending: is it saturated?

    async def run(self, agents: list[ClientConnection]) -> None:
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))
        cpu_before = time.process_time()
        try:
            await self._send_all(agents)
        finally:
            self.cpu_seconds = time.process_time() - cpu_before

    async def _send_all(self, agents: list[ClientConnection]) -> None:
        count = len(agents)
        while self.sent < self.total:
            now = time.perf_counter()
            due = min(self.total, int((now - self.start) * self.rate) + 1)
            while self.sent < due:
                scheduled = self.start + self.sent / self.rate
                if scheduled >= self.measure_from:  # lags at start-up are warm-up too
                    self.expected += 1
                    self.send_lags.append(now - scheduled)
                if self.msgpack:
                    await agents[self.sent % count].send(timed_frame_packed(scheduled))
                else:
                    await agents[self.sent % count].send(timed_frame(scheduled), text=True)
                self.sent += 1
            self.last_send = now
            await asyncio.sleep(TICK)

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.send_lags)
        return {
            "sent": self.sent,
            "expected": self.expected,
            "send_lag_p99_s": common.percentile(lags, 0.99) if lags else 0.0,
            "worst_lag_s": lags[-1] if lags else 0.0,
            "last_send_s": self.last_send - self.start,
            "offer_cpu_s": self.cpu_seconds,
        }


def publishes_msgpack(config: dict[str, Any]) -> bool:
    """Whether the agents publish in MessagePack: Bamboo's, when asked (the relay
    forwards what it gets to viewers that read JSON)."""
    return config["kind"] == "bamboo" and config.get("codec") == "msgpack"


async def connect(config: dict[str, Any]) -> tuple[list[ClientConnection], list[ClientConnection]]:
    """(agents, viewers), one of each per session."""
    url, names = config["url"], config["sessions"]
    if config["kind"] == "relay":
        viewers = await common.gather_bounded(
            [open_ws(f"{url}/sub/{n}", subprotocol=False) for n in names], CONNECT_CONCURRENCY
        )
        agents = await common.gather_bounded(
            [open_ws(f"{url}/pub/{n}", subprotocol=False) for n in names], CONNECT_CONCURRENCY
        )
        await asyncio.sleep(0.2)  # let the relay register every subscriber
        return agents, viewers
    packed = publishes_msgpack(config)
    attached = await common.gather_bounded(
        [bamboo_attach(url, n, role="agent", create=True, msgpack=packed) for n in names],
        CONNECT_CONCURRENCY,
    )
    watching = await common.gather_bounded(
        [bamboo_attach(url, n) for n in names], CONNECT_CONCURRENCY
    )
    return [ws for ws, _ in attached], [ws for ws, _ in watching]


def write_samples(path: str, latencies: array.array[float]) -> None:
    with open(path, "wb") as file:
        latencies.tofile(file)


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    config = json.loads(sys.stdin.readline())
    cpu_before = time.process_time()
    agents, viewers = await connect(config)
    common.settle_driver_collector()
    say({"ready": True})
    start = json.loads(await asyncio.to_thread(sys.stdin.readline))["start"]
    measure_from = start + config["warmup"]
    latencies: array.array[float] = array.array("d")
    tasks = [asyncio.ensure_future(watch(v, latencies, measure_from)) for v in viewers]
    tasks += [asyncio.ensure_future(drain(a)) for a in agents]
    offer = Offer(config["rate"], config["seconds"], start, measure_from, publishes_msgpack(config))
    try:
        async with asyncio.timeout(config["seconds"] + 60):
            await offer.run(agents)
            deadline = time.perf_counter() + STRAGGLER_WAIT
            while len(latencies) < offer.expected and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the stragglers still in flight
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        write_samples(config["samples_path"], latencies)
        result = {**offer.summary(), "measured": len(latencies)}
        # Said before closing, so the server's CPU for the closes is not counted.
        say({"result": {**result, "driver_cpu_s": time.process_time() - cpu_before}})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in [*agents, *viewers]), return_exceptions=True)


if __name__ == "__main__":
    raise_open_file_limit()
    common.run(main())
