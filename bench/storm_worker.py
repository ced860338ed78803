"""One driver process of the reconnect storm (bench/reconnect_storm.py): the agents and
viewers of its share of the sessions, speaking the JSON lines of bench/workers.py.

Config: ``base`` (the server's ws:// URL), ``sessions`` (ids), ``viewers`` (per
session), ``events`` (per session), ``pace`` (seconds between an agent's live events),
``concurrency`` (handshakes in flight at once). The agents publish the first quarter,
then the viewers attach (full replay) and the driver says ready; at ``start`` the agents
go on live. Server restarts are the parent's business: every peer reconnects by itself,
viewers resuming with ``last_seq`` and ``epoch``, agents resending what was not
acknowledged with its key. The result, once every viewer has every event: counts of
viewers resumed, events lost, duplicated and out of order, close codes seen, and the
first drop and last resume (``time.perf_counter()``: one clock for every process).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from . import common
from .common import settle_driver_collector
from .peers import bamboo_attach, decode_frame, token_frame, token_index

RETRY_FOR = 60.0  # a peer gives up reconnecting after this long


@dataclass
class Viewer:
    session_id: str
    epoch: str = ""
    last_seq: int = 0
    indexes: list[int] = field(default_factory=list)
    duplicates: int = 0
    gaps: int = 0
    closes: list[int | None] = field(default_factory=list)
    disconnected_at: float = 0.0
    resumed_at: float = 0.0
    resumed: list[bool] = field(default_factory=list)
    replays: int = 0  # resumes with events to replay


async def with_retries(
    connect: Any, gate: asyncio.Semaphore, failures: dict[str, int] | None = None
) -> Any:
    """``await connect()`` until it works, with jittered backoff, for RETRY_FOR seconds;
    each failed attempt counted by its exception's name in ``failures``."""
    deadline = time.monotonic() + RETRY_FOR
    delay = 0.05
    while True:
        try:
            async with gate:
                return await connect()
        except (OSError, ConnectionClosed, TimeoutError, RuntimeError) as exc:
            if failures is not None:
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)


async def run_viewer(
    base: str,
    viewer: Viewer,
    total: int,
    gate: asyncio.Semaphore,
    attached: asyncio.Event,
    failures: dict[str, int],
) -> None:
    """Attach (full replay), read; on a drop, reconnect and resume; until seq ``total``."""
    first = True
    while viewer.last_seq < total:
        ws, welcome = await with_retries(
            lambda: bamboo_attach(
                base,
                viewer.session_id,
                last_seq=viewer.last_seq,
                epoch=viewer.epoch or None,
            ),
            gate,
            failures,
        )
        viewer.epoch = welcome.epoch
        if not first:
            viewer.resumed.append(welcome.resumed)
            viewer.resumed_at = time.perf_counter()
            viewer.replays += welcome.replay > 0
        first = False
        attached.set()
        try:
            while viewer.last_seq < total:
                frame = decode_frame(await ws.recv(decode=False))
                if frame.type != "event":
                    continue
                if frame.seq <= viewer.last_seq:
                    viewer.duplicates += 1
                    continue
                if frame.seq != viewer.last_seq + 1:
                    viewer.gaps += 1
                viewer.last_seq = frame.seq
                viewer.indexes.append(token_index(frame))
        except ConnectionClosed:
            viewer.closes.append(ws.close_code)
            viewer.disconnected_at = time.perf_counter()
        finally:
            await ws.close()


async def run_agent(
    base: str,
    session_id: str,
    total: int,
    pace: float,
    gate: asyncio.Semaphore,
    first_part: asyncio.Event,
    go_on: asyncio.Event,
) -> None:
    """Publish ``total`` keyed events, ``pace`` seconds apart after the first quarter;
    after a drop, reconnect and resend every unacknowledged one with its key."""
    acked = 0
    quarter = total // 4
    while acked < total:
        ws, _ = await with_retries(
            lambda: bamboo_attach(base, session_id, role="agent", create=True), gate
        )
        try:
            next_index = acked
            while acked < total:
                if next_index == quarter and not go_on.is_set():
                    first_part.set()
                    await go_on.wait()
                if next_index < total and next_index - acked < 8:
                    await ws.send(token_frame(next_index, key=f"k{next_index}"), text=True)
                    next_index += 1
                    if next_index > quarter:
                        await asyncio.sleep(pace)
                    continue
                frame = decode_frame(await ws.recv(decode=False))
                if frame.type == "ack":
                    acked += 1
                elif frame.type == "error":
                    raise RuntimeError(f"publish refused: {frame.code} {frame.message}")
        except ConnectionClosed:
            pass
        finally:
            await ws.close()


async def run(config: dict[str, Any], started: asyncio.Future[None]) -> dict[str, Any]:
    """Agents and viewers of ``config["sessions"]``; ready once all are attached, live
    once ``started`` is done; the counts once every viewer has every event."""
    base, ids, events = config["base"], config["sessions"], config["events"]
    gate = asyncio.Semaphore(config["concurrency"])
    viewers = [Viewer(sid) for sid in ids for _ in range(config["viewers"])]
    failures: dict[str, int] = {}  # the viewers' failed connection attempts, by kind
    go_on = asyncio.Event()
    quartered = [asyncio.Event() for _ in ids]
    agents = [
        asyncio.ensure_future(
            run_agent(base, sid, events, config["pace"], gate, quartered[i], go_on)
        )
        for i, sid in enumerate(ids)
    ]
    try:
        await asyncio.gather(*(e.wait() for e in quartered))
        attached = [asyncio.Event() for _ in viewers]
        watching = [
            asyncio.ensure_future(run_viewer(base, v, events, gate, attached[i], failures))
            for i, v in enumerate(viewers)
        ]
        await asyncio.gather(*(e.wait() for e in attached))
        settle_driver_collector()
        print(json.dumps({"ready": True}), flush=True)
        await started
        go_on.set()  # mid-stream: agents publish live while viewers watch
        await asyncio.gather(*watching, *agents)
    finally:
        for task in agents:
            task.cancel()
    return summary(viewers, events) | {"failed_attempts": failures}


def summary(viewers: list[Viewer], events: int) -> dict[str, Any]:
    restarted = [v for v in viewers if v.resumed]
    closes: dict[str, int] = {}
    for v in viewers:
        for code in v.closes:
            closes[str(code)] = closes.get(str(code), 0) + 1
    return {
        "viewers": len(viewers),
        "reconnected": len(restarted),
        "resumed": sum(1 for v in viewers if v.resumed and all(v.resumed)),
        "lost": sum(len(set(range(events)) - set(v.indexes)) for v in viewers),
        "duplicated": sum(v.duplicates + len(v.indexes) - len(set(v.indexes)) for v in viewers),
        "gaps": sum(v.gaps for v in viewers),
        "replays": sum(v.replays for v in viewers),
        "close_codes": closes,
        "first_drop": min((v.disconnected_at for v in restarted), default=None),
        "last_resume": max((v.resumed_at for v in restarted), default=None),
        "resumed_at": sorted(v.resumed_at for v in restarted),
    }


async def main() -> None:
    config = json.loads(sys.stdin.readline())
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    async def wait_for_start() -> None:
        start = json.loads(await asyncio.to_thread(sys.stdin.readline))["start"]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        started.set_result(None)

    waiter = asyncio.ensure_future(wait_for_start())
    result = await run(config, started)
    waiter.cancel()
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    # On uvloop, as the relay's storm driver and every other driver: on two cores the
    # driver's CPU is the server's competition.
    common.run(main())
