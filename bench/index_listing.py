"""What does the memory and JSONL stores' listing cost in process, by order and filter,
over many sessions laid out in memory as an open lays them out? (persistence/index.py;
h494: the orders other than creation time, a user's sessions, a title over all.)

An index of ``--sessions`` sessions (nine in ten of user ``heavy``) whose ids are
random and whose metadata objects are made in id order, as a JSONL open makes them
(recovery reads the sessions in id order), created one millisecond apart in another
order (their creation order is not their order in memory); message counts random.
Each query below ``--runs`` times, the CPU of each (``time.process_time``), its median;
in a child process per tree: this one, and ``--against`` (a PYTHONPATH, ``-`` for the
virtualenv's own install, i.e. /work/main), in the same invocation.

Run: ``python -m bench.index_listing [--sessions 100000] [--runs 20] [--against -]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from . import common

QUERIES: dict[str, dict[str, Any]] = {
    "all, created desc": {},
    "all, title none, created desc": {"title_contains": "zzz"},
    "all, message_count asc": {"sort_by": "message_count", "sort_order": "asc"},
    "all, last_activity_at desc": {"sort_by": "last_activity_at"},
    "heavy, created desc": {"user_id": "heavy"},
    "heavy, title none, created desc": {"user_id": "heavy", "title_contains": "zzz"},
    "heavy, message_count asc": {"user_id": "heavy", "sort_by": "message_count"},
    "heavy, updated_at desc": {"user_id": "heavy", "sort_by": "updated_at"},
}


def child(sessions: int, runs: int) -> dict[str, float]:
    """The median CPU of each query, in ms, over an index built in this process."""
    from bamboo_session.persistence.base import SessionFilter
    from bamboo_session.persistence.index import SessionIndex
    from bamboo_session.protocol.models import SessionMetadata

    rng = random.Random(494)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(sessions)]
    created = {session_id: base + timedelta(milliseconds=n) for n, session_id in enumerate(ids)}
    index = SessionIndex()
    for n, session_id in enumerate(sorted(ids)):
        moment = created[session_id]
        metadata = SessionMetadata(
            id=session_id,
            user_id="heavy" if n % 10 else "other",
            title=f"chat {n}",
            created_at=moment,
            updated_at=moment,
            last_activity_at=moment,
        )
        metadata.message_count = rng.randrange(50)
        index.add(metadata)
    found = {}
    for name, terms in QUERIES.items():
        query = SessionFilter(limit=2, **terms)  # ?limit=1: the server asks one more
        index.query(query)  # a kept creation order made, once
        spent = []
        for _ in range(runs):
            started = time.process_time()
            index.query(query)
            spent.append((time.process_time() - started) * 1000)
        found[name] = statistics.median(spent)
    return found


def run_tree(pythonpath: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath == "-":
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = pythonpath
    argv = [sys.executable, "-m", "bench.index_listing", "--child"]
    argv += ["--sessions", str(args.sessions), "--runs", str(args.runs)]
    answer = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    found: dict[str, float] = json.loads(answer.stdout)
    return found


def main(args: argparse.Namespace) -> None:
    if args.child:
        print(json.dumps(child(args.sessions, args.runs)))
        return
    trees = [("this", os.environ.get("PYTHONPATH", "-"))]
    if args.against is not None:
        trees.append(("against", args.against))
    results: dict[str, Any] = {"machine": common.machine(), "command": common.command_line()}
    for tree, pythonpath in trees:
        results[tree] = found = run_tree(pythonpath, args)
        for name, ms in found.items():
            print(f"{tree:8s} {name:34s} {ms:8.2f} ms CPU")
    if args.against is not None:
        for name in QUERIES:
            against = results["against"][name]
            ratio = results["this"][name] / against if against else float("nan")
            print(f"RATIO {name}: this/against CPU per listing {ratio:.3f}")
    common.write_json(args.json, results)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--against", help="PYTHONPATH of the tree to compare with ('-': the venv's)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    common.add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse())
