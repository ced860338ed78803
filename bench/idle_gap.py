"""What a lone event costs the server after it idled: its CPU per event against the gap.

The issue's open loop (2,000 events/s over 200 sessions) pays about twice the CPU per
lone event that the same event costs back to back (h456: 113.7 against 58.9 us, the
same system calls), Socket.IO less so. Here that is measured as a function of the idle
gap: ``--sessions`` sessions (an agent and a viewer each) take lone events in lockstep,
round-robin, each acked and seen by its viewer; after each one the driver sleeps
``gap`` microseconds (0: the next at once) before sending the next. The server's CPU
clock (bench/common.py ``cpu_seconds``, its helpers' included) is read around each
block of ``--events``; the gaps are alternated block by block, ``--rounds`` times.
Printed per server and gap: us per event (median of the rounds), the penalty over gap
0, and the gap actually slept. Then each server is left idle for ``--idle`` seconds,
and its wake-ups then (context switches of its threads and helpers) are counted: what
it does between events that may evict its own working set.

The same driver speaks to both: Bamboo's frames, and Socket.IO's (Engine.IO 4 over a
bare WebSocket: ``40`` connect with the auth, ``42<id>[...]`` an emit acknowledged by
``43<id>[...]``, ``2``/``3`` pings), so the gap and the driver's own work are the same.

    python -m bench.idle_gap /work/main --durability memory fsync --peers socketio
    python -m bench.idle_gap /work/wt/base /work/wt/tree --durability fsync --gaps 0 500
    python -m bench.idle_gap /work/main --peers socketio --pin 0 --spin

``--pin CPU`` runs the server on that CPU alone and the driver on the others; with
``--spin`` a busy loop of the idle scheduling class (``chrt --idle``) keeps that CPU
from ever halting while the server sleeps (it yields to the server at once): if the
penalty goes with it, it is the CPU's halt (a virtual CPU given back to its host),
not time alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from . import common, compare, socketio_peer
from .bytecode_count import lone_event_peers
from .peers import decode_frame, token_frame

Server = tuple[str, common.ServerProcess]


class BambooPeers:
    """Lone events over Bamboo's wire."""

    def __init__(self, agents: list[ClientConnection], viewers: list[ClientConnection]) -> None:
        self.agents, self.viewers = agents, viewers

    async def lone_event(self, index: int) -> None:
        session = index % len(self.agents)
        await self.agents[session].send(token_frame(index), text=True)
        await _bamboo_until(self.agents[session], "ack")
        await _bamboo_until(self.viewers[session], "event")


async def _bamboo_until(ws: ClientConnection, kind: str) -> None:
    while (frame := decode_frame(await ws.recv(decode=False))).type != kind:
        if frame.type == "error":
            raise RuntimeError(f"the server answered {frame}")


class SocketIoPeers:
    """Lone events over Socket.IO's wire (Engine.IO 4 packets on a bare WebSocket)."""

    def __init__(self, agents: list[ClientConnection], viewers: list[ClientConnection]) -> None:
        self.agents, self.viewers = agents, viewers

    @classmethod
    async def attach(cls, port: int, prefix: str, sessions: int) -> SocketIoPeers:
        url = f"ws://{common.HOST}:{port}/socket.io/?EIO=4&transport=websocket"

        async def one(auth: dict[str, str]) -> ClientConnection:
            ws = await connect(url, max_size=None, compression=None)
            await _socketio_until(ws, "0")  # Engine.IO's open
            await ws.send("40" + json.dumps(auth))
            await _socketio_until(ws, "40")  # Socket.IO's connect, answered
            return ws

        names = [f"{prefix}-{i}" for i in range(sessions)]
        agents = [await one({"session": n, "role": "agent"}) for n in names]
        viewers = [await one({"session": n}) for n in names]
        return cls(agents, viewers)

    async def lone_event(self, index: int) -> None:
        session = index % len(self.agents)
        event = {"type": "token", "content": f"token {index} of a bench run"}
        await self.agents[session].send(f"42{index}" + json.dumps(["event", event]))
        await _socketio_until(self.agents[session], f"43{index}[")
        await _socketio_until(self.viewers[session], '42["event"')


async def _socketio_until(ws: ClientConnection, prefix: str) -> None:
    while not (packet := str(await ws.recv())).startswith(prefix):
        if packet == "2":  # the server's ping
            await ws.send("3")


async def attach(kind: str, server: common.ServerProcess, sessions: int) -> Any:
    if kind == compare.SOCKETIO:
        return await SocketIoPeers.attach(server.port, "gap", sessions)
    return BambooPeers(*await lone_event_peers(server.port, "gap", sessions))


async def run_block(peers: Any, pid: int, first: int, count: int, gap: float) -> Block:
    """``count`` lone events, ``gap`` seconds slept after each (a blocking sleep:
    nothing else of the driver's is due)."""
    slept = 0.0
    cpu, ticks, woken = common.cpu_seconds(pid), user_system_ticks(pid), switches(pid)
    for index in range(first, first + count):
        await peers.lone_event(index)
        if gap:
            before = time.perf_counter()
            time.sleep(gap)  # noqa: ASYNC251  (blocking on purpose: the gap is exact)
            slept += time.perf_counter() - before
    cpu = common.cpu_seconds(pid) - cpu
    user, system = (
        after - before for after, before in zip(user_system_ticks(pid), ticks, strict=True)
    )
    return Block(
        cpu_us=cpu / count * 1e6,
        slept_us=slept / count * 1e6,
        system_share=system / max(user + system, 1),
        switches=(switches(pid) - woken) / count,
    )


@dataclasses.dataclass
class Block:
    """What one block of lone events cost the server, per event."""

    cpu_us: float
    slept_us: float
    system_share: float  # of its CPU ticks, the kernel's
    switches: float  # context switches of its threads and helpers


def user_system_ticks(pid: int) -> tuple[int, int]:
    """Clock ticks of ``pid`` and its live children in user space and in the kernel."""
    user = system = 0
    for process in (pid, *common._children(pid)):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def switches(pid: int) -> int:
    """Context switches of ``pid``'s threads and its children's so far."""
    total = 0
    for process in (pid, *common._children(pid)):
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{process}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:  # voluntary and not
                        total += int(line.split()[1])
    return total


def pin(pid: int, cpu: int, helper_cpu: int | None = None) -> None:
    """Every thread of ``pid`` to ``cpu``, and of its children (the JSONL store's sync
    helper) to ``helper_cpu`` or the same; this driver to the other CPUs."""
    for process in (pid, *common._children(pid)):
        where = cpu if process == pid or helper_cpu is None else helper_cpu
        for task in Path(f"/proc/{process}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), {where})
    others = os.sched_getaffinity(0) - {cpu}
    if others:
        os.sched_setaffinity(0, others)


def spinner(cpu: int) -> subprocess.Popen[bytes]:
    """A busy loop on ``cpu`` at the idle scheduling class (SCHED_IDLE): any other task
    there takes the CPU from it at once, but the CPU itself never halts."""
    argv = ["chrt", "--idle", "0", "taskset", "-c", str(cpu), sys.executable, "-c", SPIN]
    return subprocess.Popen(argv)


SPIN = "while True: pass"


async def measure(
    kind: str, server: common.ServerProcess, args: argparse.Namespace
) -> dict[str, Any]:
    server.start()
    spinning = None
    if args.pin is not None:
        pin(server.pid, args.pin, args.helper_cpu)
        spinning = spinner(args.pin) if args.spin else None
    try:
        peers = await attach(kind, server, args.sessions)
        for index in range(args.warmup):
            await peers.lone_event(index)
        per_gap: dict[int, list[Block]] = {gap: [] for gap in args.gaps}
        first = args.warmup
        for run in range(args.rounds):
            order = args.gaps if run % 2 == 0 else list(reversed(args.gaps))
            for gap in order:
                per_gap[gap].append(
                    await run_block(peers, server.pid, first, args.events, gap / 1e6)
                )
                first += args.events
        idle_from = switches(server.pid)
        await asyncio.sleep(args.idle)
        wakeups = (switches(server.pid) - idle_from) / args.idle
        for ws in peers.agents + peers.viewers:
            await ws.close()
    finally:
        if spinning is not None:
            spinning.kill()
            spinning.wait()
        server.terminate(30)
    return {"per_gap": per_gap, "idle_switches_per_s": wakeups}


def _median(blocks: list[Block], field: str) -> float:
    values: list[float] = [getattr(block, field) for block in blocks]
    return statistics.median(values)


def servers(args: argparse.Namespace, tmp: Path) -> list[Server]:
    lineup: list[Server] = []
    if compare.SOCKETIO in args.peers:
        skip = socketio_peer.skip_line()
        if skip is None:
            lineup.append((compare.SOCKETIO, socketio_peer.server(tmp / "socketio.log")))
        else:
            print(skip)
    for t, tree in enumerate(args.trees):
        for durability in args.durability:
            label = f"{tree.name}-{durability}"
            data = tmp / f"data-{t}-{durability}"
            server = common.bamboo_server(
                data, tmp / f"{t}-{label}.log", *compare.store_flags(durability, data)
            )
            package = compare.older_package(tree.resolve(), tmp / f"{t}-{label}")
            server.argv[0:3] = [sys.executable, "-c", compare.BEFORE_BOOT, str(package)]
            lineup.append((label, server))
    return lineup


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bamboo-idle-gap-") as tmp:
        for label, server in servers(args, Path(tmp)):
            kind = compare.SOCKETIO if label == compare.SOCKETIO else "bamboo"
            results[label] = found = await measure(kind, server, args)
            base = _median(found["per_gap"][args.gaps[0]], "cpu_us")
            for gap in args.gaps:
                blocks = found["per_gap"][gap]
                cpu = _median(blocks, "cpu_us")
                runs = ", ".join(f"{b.cpu_us:.1f}" for b in blocks)
                print(
                    f"{label:24s} gap {gap:5d} us (slept {_median(blocks, 'slept_us'):5.0f}):"
                    f" {cpu:6.1f} us/event (+{cpu - base:5.1f} over gap {args.gaps[0]};"
                    f" runs {runs});"
                    f" kernel {_median(blocks, 'system_share'):.0%},"
                    f" {_median(blocks, 'switches'):.2f} switches/event",
                    flush=True,
                )
            print(
                f"{label:24s} idle: {found['idle_switches_per_s']:.1f} context switches/s",
                flush=True,
            )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trees", nargs="*", type=Path, help="checkouts whose Bamboo servers to measure"
    )
    parser.add_argument("--durability", nargs="+", choices=compare.DURABILITIES, default=["memory"])
    parser.add_argument("--peers", nargs="*", choices=[compare.SOCKETIO], default=[])
    parser.add_argument(
        "--gaps", nargs="+", type=int, default=[0, 100, 500, 2000], help="microseconds"
    )
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--events", type=int, default=1000, help="lone events per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks of each gap, alternated")
    parser.add_argument("--pin", type=int, help="the CPU the server runs on (the driver: others)")
    parser.add_argument("--helper-cpu", type=int, help="with --pin: the server's children's CPU")
    parser.add_argument(
        "--spin", action="store_true", help="with --pin: keep that CPU from halting (SCHED_IDLE)"
    )
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle, wake-ups counted")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
