"""Question: can an operator roll Bamboo from one version to another, and back, without
losing or misreading anything? Given two source trees (an older checkout and this one),
each run with the shared virtualenv through a shim (bench/rolling_trees.py), with real
servers on loopback, a publisher streaming and viewers resuming through every change:

1. ``store``: JSONL and SQLite, each server stopped under load with SIGTERM and,
   separately, SIGKILL: the new version on the old one's data, the old one on the new
   one's (a rollback), the new one again (bench/rolling_stores.py);
2. ``redis``: an old and a new instance on one redis-server of the bench's own (free
   port), clients rotating between them mid-stream, then the old one replaced by a
   new one (bench/rolling_cluster.py);
3. ``wire``: each tree's Python client (``protocol/client``) against each tree's
   server: hello, publish (batched where offered), resume across a restart
   (bench/rolling_wire.py).

Everything it starts (servers, redis-server, client processes) it stops by pid; each
scenario is bounded in events and in time. Make an old tree with
``git worktree add --detach /tmp/old <commit>``.

    python -m bench.rolling_upgrade --old /tmp/old                 # every scenario
    python -m bench.rolling_upgrade --old /tmp/old --only store --stores jsonl --stops kill

Prints one JSON object (each scenario's steps and the problems found) and exits 0 when
no problem was found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .rolling_trees import Tree

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("store", "redis", "wire")


async def run_scenarios(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    old = Tree.prepare("old", args.old, work)
    new = Tree.prepare("new", args.new, work)
    report: dict[str, Any] = {
        "old": {"tree": str(old.root), "commit": old.commit(), "imports": old.imports_from()},
        "new": {"tree": str(new.root), "commit": new.commit(), "imports": new.imports_from()},
    }
    if "store" in args.only:
        from .rolling_stores import StoreRun

        report["store"] = []
        for kind in args.stores:
            for stop in args.stops:
                where = work / f"{kind}-{stop}"
                where.mkdir()
                run = StoreRun(kind, stop, old, new, where, args.events)
                report["store"].append(await run.run())
    if "redis" in args.only:
        from .rolling_cluster import cluster_scenario

        report["redis"] = await cluster_scenario(old, new, work / "redis", args.events)
    if "wire" in args.only:
        from .rolling_wire import wire_scenario

        report["wire"] = await wire_scenario(old, new, work / "wire", args.events)
    return report


def passed(report: dict[str, Any]) -> bool:
    runs = [*report.get("store", []), *report.get("redis", []), *report.get("wire", [])]
    return all(run.get("ok") for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the older source tree")
    parser.add_argument("--new", type=Path, default=ROOT, help="the newer (default: this one)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--stores", nargs="+", choices=("jsonl", "sqlite"), default=["jsonl", "sqlite"]
    )
    parser.add_argument("--stops", nargs="+", choices=("term", "kill"), default=["term", "kill"])
    parser.add_argument("--events", type=int, default=600, help="items each publisher sends")
    parser.add_argument("--keep", type=Path, help="work here (logs, data) and keep it")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run_scenarios(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="bamboo-rolling-") as tmp:
            report = asyncio.run(run_scenarios(args, Path(tmp)))
    report["ok"] = passed(report)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
