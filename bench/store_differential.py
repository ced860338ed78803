"""Differential test of the three stores through the running server: one server on
JSONL, one on SQLite, one on Redis (a redis-server of its own), all with the same
flags, driven by the same seeded random sequence of operations (WebSocket frames and
HTTP GETs), every answer recorded, normalised where the stores must differ (generated
ids, epochs, times) and compared step by step. Midway every server is killed with
SIGKILL at the same step, a session is removed with the offline ``delete`` tool, and
the servers start again on what they stored.

    PYTHONPATH=<shim> .venv/bin/python -m bench.store_differential --seed 1 --steps 300

Bounded: ``--steps`` operations, each waiting at most a few seconds, plus at most
``--expiries`` waits of one TTL. Prints each differing step (with the seed) and writes
every step's answers to ``--out``. Stops every process it started, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .crash_stores import KINDS
from .differential_peers import StorePeer, normalised
from .redis_scaling import Redis
from .soak_server import ROOT, Server

TTL = 10
HEARTBEAT = 1.5  # Redis presence: a killed server's connections leave within 2 s
MAX_FRAME = 8192
MAX_TITLE = 24
MAX_USER_ID = 8
FLAGS = (
    "--default-ttl", str(TTL), "--cleanup-interval", "2", "--rate-limit", "0",
    "--max-sessions-per-user", "4", "--max-connections-per-user", "3",
    "--max-title-length", str(MAX_TITLE), "--max-user-id-length", str(MAX_USER_ID),
    "--max-frame-bytes", str(MAX_FRAME), "--max-list-page", "6",
    "--max-stored-sessions-per-user", "6", "--max-batch-items", "5",
)  # fmt: skip
# Small byte caps, so that appends reach them: JSONL counts its log file's bytes
# (documented), so its too_large answers come earlier than SQLite's and Redis's.
BYTE_CAPS = ("--max-session-bytes", "6000", "--max-user-bytes", "20000")
SESSIONS = ("s0", "s1", "s2", "s3", "s4", "s5")
USERS = ("u0", "u1", "u2", None, "u" * (MAX_USER_ID + 1))
SLOTS = 5


def make_op(rng: random.Random, marks: int, expiries_left: int) -> dict[str, Any]:
    """One operation, store-independent: what every store is asked at this step."""
    slot = rng.randrange(SLOTS)
    kind = rng.choices(
        ["attach", "event", "message", "batch", "history", "events", "state", "close",
         "sized", "list", "get", "get_events", "expire", "mark"],
        [14, 14, 8, 5, 4, 4, 4, 5, 3, 8, 4, 4, 1 if expiries_left else 0, 2],
    )[0]  # fmt: skip
    op: dict[str, Any] = {"op": kind, "slot": slot}
    key = rng.choice([None, None, "k1", "k2", "k3", "", f"k{rng.randrange(50)}"])
    if kind == "attach":
        op["session"] = rng.choice([*SESSIONS, None])
        op["create"] = rng.random() < 0.7
        op["user"] = rng.choice(USERS)
        op["title"] = rng.choice([None, "chat", "x" * MAX_TITLE, "x" * (MAX_TITLE + 1), "Chat B"])
        op["resume"] = rng.choice([None, None, "current", "bogus"])
        op["last_seq"] = rng.choice([0, 1, 3, 50])
        op["role"] = rng.choice(["client", "agent"])
    elif kind == "event":
        op["event"] = rng.choice(
            [{"type": "token", "content": "t" * rng.randrange(1, 400)},
             {"type": "custom", "name": "n", "data": {"a": [1, 2.5, None, "x"]}},
             {"type": "tool_start", "tool_call_id": "c1", "tool_name": "w", "arguments": {}},
             {"type": "message", "message": {"role": "user", "content": "hi"}},
             {"type": "nope"}]
        )  # fmt: skip
        op["key"] = key
    elif kind == "message":
        op["message"] = {
            "role": rng.choice(["user", "assistant"]),
            "content": "m" * rng.randrange(1, 300),
        }
        op["key"] = key
    elif kind == "batch":
        op["items"] = [
            {
                "event": {"type": "token", "content": "b" * rng.randrange(1, 200)},
                "key": rng.choice([None, "k1", f"b{rng.randrange(20)}"]),
            }
            for _ in range(rng.randrange(0, 7))
        ]
    elif kind == "history":
        op["limit"] = rng.choice([None, 1, 2, 5])
        op["before"] = rng.choice([None, 0, 1, 3, 100])
    elif kind == "events":
        op["after_seq"] = rng.choice([None, 0, 2, 5, 1000])
        op["limit"] = rng.choice([None, 1, 3])
    elif kind == "state":
        op["state"] = rng.choice(["active", "idle", "closed", "closed", "disconnected"])
    elif kind == "sized":
        op["delta"] = rng.choice([-1, 0, 1])
    elif kind == "list":
        params: dict[str, Any] = {}
        for name, values in (
            ("user_id", ["u0", "u1", "u2", "nobody"]),
            ("state", ["active", "idle", "disconnected", "closed", "expired", "bogus"]),
            ("sort_by", ["created_at", "updated_at", "last_activity_at", "message_count", "id"]),
            ("sort_order", ["asc", "desc"]),
            ("limit", ["1", "2", "6", "7", "0"]),
            ("offset", ["0", "1", "3", "-1"]),
            ("title_contains", ["chat", "Chat", "x"]),
        ):
            if rng.random() < 0.35:
                params[name] = rng.choice(values)
        if marks and rng.random() < 0.4:
            params[rng.choice(["created_after", "created_before", "active_after"])] = rng.randrange(
                marks
            )
        op["params"] = params
    elif kind in ("get", "get_events"):
        op["session"] = rng.choice(SESSIONS)
        op["params"] = {
            name: rng.choice(values)
            for name, values in (
                ("limit", ["1", "2", "0", "x"]),
                ("before", ["0", "1", "2"]),
                ("after_seq", ["0", "2", "-1"]),
            )
            if rng.random() < 0.3
        }
    return op


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--kill-at", type=int, default=None, help="step of the SIGKILL (default: half)"
    )
    parser.add_argument("--expiries", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--byte-caps", action="store_true", help="small --max-session-bytes and --max-user-bytes"
    )
    args = parser.parse_args()
    kill_at = args.steps // 2 if args.kill_at is None else args.kill_at
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bamboo-diff-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        redis = Redis(work / "redis")
        flags = (*FLAGS, *BYTE_CAPS) if args.byte_caps else FLAGS
        servers = {
            "jsonl": Server(work / "jsonl", work / "jsonl.log", ("--durability", "fsync", *flags)),
            "sqlite": Server(
                work, work / "sqlite.log", flags, store=f"sqlite://{work / 's.db'}?durability=fsync"
            ),
            "redis": Server(
                work, work / "redis.log", flags, store=f"{redis.url('diff')}&heartbeat={HEARTBEAT}"
            ),
        }
        peers = {kind: StorePeer(kind, servers[kind], MAX_FRAME) for kind in KINDS}
        try:
            for server in servers.values():
                server.start()
            return await drive(rng, args, kill_at, peers, servers)
        finally:
            for peer in peers.values():
                await peer.drop_all()
            for server in servers.values():
                server.kill()
            redis.stop()


async def drive(
    rng: random.Random,
    args: argparse.Namespace,
    kill_at: int,
    peers: dict[str, StorePeer],
    servers: dict[str, Server],
) -> int:
    marks: list[str] = []
    expiries_left = args.expiries
    steps: list[dict[str, Any]] = []
    differing = 0
    started = time.monotonic()
    for step in range(args.steps):
        if step == kill_at:
            answers = await kill_and_restart(rng, peers, servers)
            op: dict[str, Any] = {"op": "kill9+delete+restart"}
        else:
            op = make_op(rng, len(marks), expiries_left)
            if op["op"] == "expire":
                expiries_left -= 1
                await asyncio.sleep(TTL + 2.5)  # one TTL and a cleanup interval
            if op["op"] == "mark":
                await asyncio.sleep(0.01)
                marks.append(datetime.now(UTC).isoformat().replace("+00:00", "Z"))
                await asyncio.sleep(0.01)
            op_resolved = {**op, "params": resolve_marks(op.get("params"), marks)}
            answers = dict(
                zip(
                    peers,
                    await asyncio.gather(*(p.run(op_resolved) for p in peers.values())),
                    strict=True,
                )
            )
        shown = {kind: normalised(answer, peers[kind].aliases) for kind, answer in answers.items()}
        verdict = compare(shown)
        steps.append({"step": step, "op": op, "verdict": verdict, "answers": shown, "raw": answers})
        if verdict != "same":
            differing += verdict == "DIFFERS"
            print(f"seed {args.seed} step {step} {verdict}: {json.dumps(op)}")
            for kind, value in shown.items():
                print(f"  {kind:6} {json.dumps(value, sort_keys=True)[:1500]}")
    elapsed = time.monotonic() - started
    print(f"seed {args.seed}: {args.steps} steps in {elapsed:.0f} s, {differing} differing")
    if args.out:
        args.out.write_text(json.dumps(steps, indent=1, sort_keys=True))
    return 1 if differing else 0


def compare(shown: dict[str, Any]) -> str:
    """``same``; ``documented`` when only the JSONL store's byte counts differ (its
    ``stored_bytes`` is its log file's size, docs/protocol.md, Stored bytes per
    session) and SQLite and Redis agree; else ``DIFFERS``."""
    texts = {kind: json.dumps(value, sort_keys=True) for kind, value in shown.items()}
    if len(set(texts.values())) == 1:
        return "same"
    masked = {re.sub(r'("stored_bytes": )\d+|\d+ (bytes|of)', r"\1<b>", t) for t in texts.values()}
    if len(masked) == 1 and texts["sqlite"] == texts["redis"]:
        return "documented"
    return "DIFFERS"


def delete_offline(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bamboo_session.server", "delete", *arguments]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)


def resolve_marks(params: dict[str, Any] | None, marks: list[str]) -> dict[str, Any] | None:
    if params is None:
        return None
    times = ("created_after", "created_before", "active_after")
    return {k: (marks[v] if k in times else v) for k, v in params.items()}


async def kill_and_restart(
    rng: random.Random, peers: dict[str, StorePeer], servers: dict[str, Server]
) -> dict[str, Any]:
    """SIGKILL every server, remove one session offline with the ``delete`` tool, start
    them again, and read back what each store holds."""
    victim = rng.choice(SESSIONS)
    answers: dict[str, Any] = {}
    for server in servers.values():
        server.kill()
    for kind, peer in peers.items():
        dropped = await peer.drain_all()
        store = servers[kind].store
        where = ["--store", store] if store else ["--data-dir", str(servers[kind].data_dir)]
        tool = await asyncio.to_thread(delete_offline, [*where, peer.real_id(victim)])
        answers[kind] = {
            "dropped": dropped,
            "delete": [tool.returncode, tool.stdout, peer.alias_text(tool.stderr)],
        }
    for server in servers.values():
        server.start()
    for kind, peer in peers.items():
        answers[kind]["at restart"] = await peer.snapshot(SESSIONS)
    # Redis's presence keeps the killed server's connections for up to 4/3 of its
    # heartbeat (documented); past it, every store should show the same.
    await asyncio.sleep(HEARTBEAT * 4 / 3 + 1)
    for kind, peer in peers.items():
        answers[kind]["settled"] = await peer.snapshot(SESSIONS)
    return answers


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
