"""The crash soak's checks (bench/crash_soak.py, one server or several instances): what
the store holds against what publishers were acknowledged and readers saw, and the
servers' logs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .crash_clients import Publisher, Reader
from .crash_stores import SoakStore

SESSIONS = ("soak-a", "soak-b")


async def check(store: SoakStore, pubs: list[Publisher], readers: list[Reader]) -> list[str]:
    problems: list[str] = []
    for session_id in SESSIONS:
        records, store_problems = await store.records(session_id)
        problems += store_problems
        seqs = [r.seq for r in records]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{session_id}: seqs are not 1..{len(seqs)}")
        seq_of_key: dict[str | None, int] = {}
        for record in records:
            if record.key in seq_of_key:
                problems.append(f"{session_id}: key {record.key} stored twice")
            seq_of_key[record.key] = record.seq
        for pub in (p for p in pubs if p.session_id == session_id):
            if pub.unacked or pub.errors:
                problems.append(f"{pub.name}: {len(pub.unacked)} unacked, errors {pub.errors[:3]}")
            for key, seq in pub.acked.items():
                if seq_of_key.get(key) != seq:
                    problems.append(f"{key}: acked as {seq}, stored as {seq_of_key.get(key)}")
            in_log = [
                seq_of_key[pub.key(i)] for i in range(pub.next_index) if pub.key(i) in seq_of_key
            ]
            if in_log != sorted(in_log):
                problems.append(f"{pub.name}: events stored out of the order sent")
        for reader in (r for r in readers if r.session_id == session_id):
            problems += [f"reader of {session_id}: {p}" for p in reader.problems]
            if reader.seen != seqs:
                problems.append(f"reader of {session_id} saw {len(reader.seen)} of {len(seqs)}")
            elif reader.contents != [r.content for r in records]:
                problems.append(f"reader of {session_id}: contents differ from the log")
    return problems


def log_problems(log_path: Path, most: int = 5) -> list[str]:
    """The server log's errors and tracebacks: lines that are not JSON (an uncaught
    traceback), at level error or above, or carrying an exception."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        bad = not isinstance(entry, dict) or (
            entry.get("level") in ("error", "critical") or "exception" in entry
        )
        if bad and line.strip():
            found.append(line)
    return [f"server log: {line[:500]}" for line in found[:most]] + (
        [f"server log: {len(found) - most} more such lines"] if len(found) > most else []
    )


def logged_stores(log_path: Path) -> list[str]:
    """The store URL of each start, as the server said it listened: what it ran on
    (durability included), not what the soak meant it to."""
    stores = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("event", "")).startswith("listening on"):
            stores.append(str(entry.get("store")))
    return stores


def report(result: dict[str, Any], work: Path, *, keep: bool) -> int:
    """Prints a soak's figures as one JSON object, removes its directory unless kept or
    it holds what went wrong, and returns the exit status: 1 when a check failed."""
    result["nproc"] = os.cpu_count()
    result["workdir"] = str(work) if keep or result["problems"] else None
    print(json.dumps(result, indent=2))
    if not keep and not result["problems"]:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["problems"] else 0
