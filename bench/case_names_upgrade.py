"""The cost of a JSONL store's move to format 2 (case_names.py) at its first open:
two stores of N server-made sessions (ids ``s_`` and 22 URL-safe characters: almost
all with a capital) built alike and closed cleanly; one then given format 1's names
(each file renamed in place, as a format-1 version named it: the inodes and times the
index snapshot checks stay, so both opens take the fast start). Each store is then
opened once for writing, in a fresh child process: the baseline (format 2 already),
then the upgrade. Printed: each open's wall time, the child's CPU time, its rename
and fsync syscall counts (strace -c, when ``--strace``), and the ratios.

    .venv/bin/python bench/case_names_upgrade.py --sessions 20000 [--strace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl.layout import id_of_stem
from bamboo_session.protocol.ids import new_session_id
from bamboo_session.protocol.models import AgentEvent, Session

_OPEN = """
import asyncio, json, sys, time
from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
async def main():
    config = JsonlStorageConfig(sys.argv[1], cleanup_interval=None)
    wall, cpu = time.perf_counter(), time.process_time()
    storage = await JsonlStorage.open(config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "format": storage.store_format,
                      "from_snapshot": storage.recovery.from_snapshot}))
    await storage.close()
asyncio.run(main())
"""


async def build(base: Path, count: int) -> None:
    config = JsonlStorageConfig(base, durability="os", cleanup_interval=None)
    async with await JsonlStorage.open(config) as storage:
        ids = [new_session_id() for _ in range(count)]
        for start in range(0, count, 500):
            chunk = ids[start : start + 500]
            await asyncio.gather(*(storage.create_session(Session.new(i)) for i in chunk))
            await asyncio.gather(*(storage.append_event(i, AgentEvent.token("x")) for i in chunk))


def to_format_1(base: Path) -> int:
    """Each file renamed in place to its session's id (format 1's name)."""
    renamed = 0
    for directory in (base / "sessions", base / "events"):
        for entry in os.scandir(directory):
            if "~" in entry.name:
                end = entry.name.index(".", entry.name.index("~"))
                session_id = id_of_stem(entry.name[:end])
                assert session_id is not None, entry.name
                os.rename(entry.path, directory / (session_id + entry.name[end:]))
                renamed += 1
    (base / "FORMAT").write_text('{"format": 1}\n')
    return renamed


def open_once(base: Path, use_strace: bool) -> dict[str, object]:
    argv = [sys.executable, "-c", _OPEN, str(base)]
    summary = base.parent / f"{base.name}.strace"
    if use_strace:
        argv = ["strace", "-f", "-c", "-e", "trace=rename,fsync", "-o", str(summary), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if use_strace:
        for line in summary.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in ("rename", "fsync"):
                found[parts[-1]] = int(parts[3])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--strace", action="store_true", help="count rename and fsync calls")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="case_names_upgrade-"))
    try:
        baseline, upgraded = root / "format2", root / "format1"
        started = time.perf_counter()
        for base in (baseline, upgraded):
            asyncio.run(build(base, args.sessions))
        renamed = to_format_1(upgraded)
        print(
            f"built 2 x {args.sessions} sessions in {time.perf_counter() - started:.1f} s; "
            f"{renamed} files given format 1's names"
        )
        base_run, up_run = open_once(baseline, args.strace), open_once(upgraded, args.strace)
        print("baseline (format 2):", base_run)
        print("upgrade  (format 1):", up_run)
        for key in ("wall", "cpu"):
            extra = float(up_run[key]) - float(base_run[key])  # type: ignore[arg-type]
            ratio = float(up_run[key]) / float(base_run[key])  # type: ignore[arg-type]
            print(f"RATIO {key}: {ratio:.2f} (upgrade {extra:+.2f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
