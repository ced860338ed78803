"""What does one lone event cost the server, counted in bytecodes rather than timed?

At 10 events/s per session over hundreds of sessions nearly every event is alone in its
batch (issue 14). On a shared 2-core machine wall and CPU time of such a load drift by
tens of percent between runs; the number of bytecodes the server's event-loop thread
executes per event hardly moves, so it compares two trees, or two versions of a
layer, where timing cannot.

A real ``bamboo-session serve`` subprocess (bench/common.py), started through
bench/bytecode_tracer.py with ``BAMBOO_OPCODES`` set: after the warm-up the driver
signals it to start counting (SIGUSR1), at the end to stop and write its counts
(SIGUSR2), so only the measured phase counts. The driver: ``--sessions`` sessions, one
agent and one viewer each; ``--events`` publishes, each alone: sent, then its ``ack``
and the viewer's ``event`` awaited before the next (lockstep), round-robin over the
sessions. Printed: bytecodes per event in all and per layer (LAYERS: files grouped by
what they do), and the functions that cost most. C code (uvloop, msgspec, the
websockets frame mask) runs no bytecodes and does not count.

Keepalive pings are off (NO_CLOCK_WORK): work done by the clock would weigh more per
event the longer the traced phase lasts. The JSONL store's timed checkpoints cannot
be turned off; they get a layer of their own (TIMED), and the ratio is taken without
them: the layers of the event's own path count the same run after run.

``--against TREE`` (or ``BENCH_BEFORE=TREE``) counts an older checkout's server the
same way, its runs alternated with this tree's, and prints the ratios.

    python -m bench.bytecode_count                          # 200 sessions, 2,000 events, fsync
    python -m bench.bytecode_count --durability memory      # or os: JSONL, ack after write
    python -m bench.bytecode_count --against /work/main --runs 2
    python -m bench.bytecode_count --sessions 3 --events 20 --warmup 6   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from . import common, compare
from .bytecode_tracer import ENV
from .peers import bamboo_attach, decode_frame, token_frame

SIGNAL_ANSWER_TIMEOUT = 30.0
DURABILITIES = ("fsync", "os", "memory")
# Keepalive pings are off: traced, the measured phase lasts tens of times longer than
# the load it stands for (longer again on a busy machine), and work done by the clock
# rather than by the event would weigh as much more per event, varying with the load.
# The JSONL store's checkpoints on a timer (every 5 s for a session written to) have no
# flag: they are counted apart (TIMED), with the pathlib and thread hand-offs they make.
NO_CLOCK_WORK = ["--ping-interval", "none"]
# Boot of a traced server: the tracer armed before any of the server's code runs.
_TRACED = "import bench.bytecode_tracer as tracer\ntracer.install()\n"
_THIS_TREE = (
    "import runpy\nrunpy.run_module('bamboo_session.server', run_name='__main__', alter_sys=True)\n"
)


# Layers, first match wins: (name, file path fragments, function name fragments or
# None for every function of those files). websockets' own code runs on the reading
# side (data_received, its protocol's parser, recv's assembler) but for its send
# functions; the server writes event frames to the socket itself (server/flush.py
# WebSocketSink).
def _server(*modules: str) -> tuple[str, ...]:
    return tuple(f"/server/{module}.py" for module in modules)


_SENDING = ("send", "write", "websocket_frame")
TIMED = "checkpoints (timed)"
_CHECKPOINT_WORK = (
    "_write",
    "_flush",
    "worker",
    "_take_found",
    "write_dirty",
    "Checkpointer.write",
)
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
    (TIMED, ("/persistence/jsonl/checkpointer.py",), _CHECKPOINT_WORK),
    (TIMED, ("/pathlib.py", "/persistence/threads.py", "/concurrent/futures/"), None),
    ("store", ("/persistence/",), None),
    ("websockets send", ("/websockets/", *_server("flush", "http_wire")), _SENDING),
    (
        "outbox",
        _server("outbox", "outbound", "writer_life", "sent_events", "flush", "read_back"),
        None,
    ),
    ("actor", _server("actor", "actors", "inbox", "commands", "room", "presence"), None),
    (
        "reading",
        (
            "/websockets/",
            "/protocol/",
            *_server("whole_frames", "arriving_frames", "sliced_reads", "http_wire"),
            *_server("connection", "receiver", "decode_charge", "close_bound", "limits", "timers"),
        ),
        None,
    ),
    (
        "asyncio/loop glue",
        ("/asyncio/", "/uvloop/", "/bamboo_session/wakeup.py", "/threading.py"),
        None,
    ),
]
OTHER = "other"
UNTIMED = "total without timed checkpoints"
# The layers an event crosses on its own way in and out, which count the same run after
# run: the store's and the loop's also carry work of their own threads and timers.
EVENT_PATH = "reading + actor + outbox + websockets send"
_PATH_LAYERS = ("reading", "actor", "outbox", "websockets send")
LAYER_NAMES = [
    "reading",
    "actor",
    "outbox",
    "store",
    "websockets send",
    "asyncio/loop glue",
    OTHER,
    TIMED,
]


def short_name(path: str) -> str:
    """A file's path from its package's root: server/outbox.py, websockets/frames.py."""
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for folder in ("server", "persistence", "protocol", "bamboo_session", "bench"):
        if f"/{folder}/" in path:
            return folder + "/" + path.rsplit(f"/{folder}/", 1)[1]
    return path


def layer_of(path: str, function: str) -> str:
    for name, files, functions in LAYERS:
        if any(f in path for f in files) and (
            functions is None or any(f in function.lower() for f in functions)
        ):
            return name
    return OTHER


def traced_server(
    tree: Path | None, durability: str, tmp: Path, label: str
) -> common.ServerProcess:
    """This tree's server (``tree`` None) or the one at ``tree``, its tracer armed."""
    data = tmp / f"data-{label}"
    store = {"memory": ["--store", "memory://"], "os": ["--durability", "os"]}.get(durability, [])
    server = common.bamboo_server(data, tmp / f"{label}.log", *store, *NO_CLOCK_WORK)
    if tree is None:
        server.argv[1:3] = ["-c", _TRACED + _THIS_TREE]
    else:
        package = compare.older_package(tree, tmp / label)
        server.argv[1:3] = ["-c", _TRACED + compare.BEFORE_BOOT, str(package)]
    server.name = "bamboo"  # BENCH_PROFILE samples it as any Bamboo server
    server.env = {**os.environ, ENV: str(tmp / f"{label}.opcodes.json")}
    return server


async def lone_event_peers(
    port: int, prefix: str, sessions: int
) -> tuple[list[ClientConnection], list[ClientConnection]]:
    """``sessions`` new sessions of a server on ``port``: each one's agent and viewer."""
    base = f"ws://{common.HOST}:{port}"
    names = [f"{prefix}-{i}" for i in range(sessions)]
    agents = [(await bamboo_attach(base, n, role="agent", create=True))[0] for n in names]
    viewers = [(await bamboo_attach(base, n))[0] for n in names]
    return agents, viewers


async def lone_events(
    agents: list[ClientConnection], viewers: list[ClientConnection], first: int, count: int
) -> None:
    """``count`` publishes in lockstep, round-robin: each acked and seen by its viewer
    before the next is sent."""
    for index in range(first, first + count):
        session = index % len(agents)
        await agents[session].send(token_frame(index), text=True)
        await _until(agents[session], "ack")
        await _until(viewers[session], "event")


async def _until(ws: ClientConnection, kind: str) -> None:
    while True:
        frame = decode_frame(await ws.recv(decode=False))
        if frame.type == kind:
            return
        if frame.type == "error":
            raise RuntimeError(f"the server answered {frame}")


async def _answered(server: common.ServerProcess, signum: int, marker: Path) -> None:
    """Sends ``signum`` to the server and waits for the tracer's ``marker`` file."""
    os.kill(server.pid, signum)
    deadline = time.monotonic() + SIGNAL_ANSWER_TIMEOUT
    while not _written(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the traced server did not answer signal {signum}")
        await asyncio.sleep(0.01)


def _written(marker: Path) -> bool:
    return marker.exists()  # a stat: the driver has nothing else to do meanwhile


async def count_once(
    tree: Path | None, args: argparse.Namespace, tmp: Path, label: str
) -> dict[str, Any]:
    """One server's counts per lone event: by function and by layer."""
    server = traced_server(tree, args.durability, tmp, label).start()
    output = Path(server.env[ENV]) if server.env else tmp
    try:
        agents, viewers = await lone_event_peers(server.port, f"ops-{label}", args.sessions)
        await lone_events(agents, viewers, 0, args.warmup)
        await _answered(server, signal.SIGUSR1, output.with_name(output.name + ".started"))
        await lone_events(agents, viewers, args.warmup, args.events)
        await _answered(server, signal.SIGUSR2, output)
        for ws in agents + viewers:
            await ws.close()
    finally:
        server.terminate()
    return per_event(counted(output), args.events)


def counted(path: Path) -> list[list[Any]]:
    """The tracer's rows: file, function, first line, bytecodes, calls."""
    rows: list[list[Any]] = json.loads(path.read_text())["functions"]
    return rows


def per_event(rows: list[list[Any]], events: int) -> dict[str, Any]:
    functions: defaultdict[str, float] = defaultdict(float)
    calls: defaultdict[str, float] = defaultdict(float)
    layers: defaultdict[str, float] = defaultdict(float)
    for path, function, _line, count, entered in rows:
        name = f"{short_name(path)}:{function}"
        functions[name] += count / events
        calls[name] += entered / events
        layers[layer_of(path, function)] += count / events
    return {
        "total": sum(layers.values()),
        "layers": {name: layers.get(name, 0.0) for name in LAYER_NAMES},
        "functions": dict(functions),
        "calls": dict(calls),
    }


def report(runs: dict[str, list[dict[str, Any]]], top: int) -> dict[str, Any]:
    """Prints each tree's median run per layer, the spread, and the costliest functions."""
    medians = {label: _median_run(found) for label, found in runs.items()}
    labels = list(runs)
    header = ["layer", *labels]
    if len(labels) == 2:
        header.append(f"{labels[0]}/{labels[1]}")
    rows = []
    for layer in [*LAYER_NAMES, "total", UNTIMED, EVENT_PATH]:
        values = [_figure(medians[label], layer) for label in labels]
        row = [layer, *(f"{v:,.0f}" for v in values)]
        if len(labels) == 2:
            row.append(f"{values[0] / max(values[1], 1e-9):.3f}")
        rows.append(row)
    print(compare.markdown_table(header, rows))
    for label, found in runs.items():
        totals = ", ".join(
            f"{r['total']:,.1f} ({_figure(r, UNTIMED):,.1f}; {_figure(r, EVENT_PATH):,.1f})"
            for r in found
        )
        print(
            f"{label}: bytecodes per lone event (without {TIMED}; event path), each run: {totals}"
        )
    ratios: dict[str, float] = {}
    if len(labels) == 2:
        ratio = _figure(medians[labels[0]], UNTIMED) / max(
            _figure(medians[labels[1]], UNTIMED), 1e-9
        )
        ratios["bytecodes per lone event"] = ratio
        print(common.ratio_line("bytecodes", f"{labels[0]}/{labels[1]}", ratio, "< 1"))
        path = [_figure(medians[label], EVENT_PATH) for label in labels]
        ratios["event path"] = path[0] / max(path[1], 1e-9)
        print(common.ratio_line("bytecodes", "event path", ratios["event path"], "< 1"))
    if len(labels) == 2:
        print_changed(medians[labels[0]]["functions"], medians[labels[1]]["functions"], top)
    for label in labels:
        costly = sorted(medians[label]["functions"].items(), key=lambda kv: -kv[1])[:top]
        calls = medians[label]["calls"]
        print(f"\n{label}: the {top} costliest functions (bytecodes and calls per lone event)")
        for name, value in costly:
            print(f"  {value:8.1f} {calls[name]:6.2f}  {name}")
    return {"medians": medians, "ratios": ratios}


def print_changed(this: dict[str, float], other: dict[str, float], top: int) -> None:
    """The functions whose bytecodes per lone event differ most between the two trees."""
    names = set(this) | set(other)
    changes = sorted(
        ((this.get(n, 0.0) - other.get(n, 0.0), n) for n in names), key=lambda c: -abs(c[0])
    )
    print(f"\nthe {top} functions that changed most (this - against, bytecodes per lone event)")
    for change, name in changes[:top]:
        if abs(change) >= 0.5:
            print(f"  {change:+8.1f}  {name}")


def _figure(run: dict[str, Any], row: str) -> float:
    if row == "total":
        return float(run["total"])
    if row == UNTIMED:
        return float(run["total"] - run["layers"][TIMED])
    if row == EVENT_PATH:
        return float(sum(run["layers"][layer] for layer in _PATH_LAYERS))
    return float(run["layers"][row])


def _median_run(found: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(found, key=lambda r: _figure(r, UNTIMED))
    return ordered[(len(ordered) - 1) // 2]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    trees: dict[str, Path | None] = {"this": None}
    if args.against is not None:
        trees["against"] = args.against
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    with common.workdir("bytecodes") as tmp:
        for run in range(args.runs):
            for label, tree in trees.items():
                runs[label].append(await count_once(tree, args, tmp, f"{label}-{run}"))
    print(
        f"{args.events} lone events over {args.sessions} sessions, --durability "
        f"{args.durability}, after {args.warmup} warm-up events; {args.runs} run(s) each"
    )
    summary = report(runs, args.top)
    light = {
        label: [{"total": r["total"], "layers": r["layers"]} for r in found]
        for label, found in runs.items()
    }
    return {
        "question": "bytecodes",
        "runs": light,
        "trees": {k: str(v) for k, v in trees.items()},
        **summary,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--events", type=int, default=2_000, help="counted lone events")
    parser.add_argument(
        "--warmup", type=int, default=0, help="lone events before counting (default: 2 a session)"
    )
    parser.add_argument("--durability", choices=DURABILITIES, default="fsync")
    parser.add_argument(
        "--against",
        type=Path,
        default=Path(os.environ[compare.BEFORE_TREE_ENV])
        if os.environ.get(compare.BEFORE_TREE_ENV)
        else None,
        help="another checkout to count the same way (default: $BENCH_BEFORE)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each tree, alternated")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.warmup <= 0:
        args.warmup = 2 * args.sessions
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
    sys.exit(0)
