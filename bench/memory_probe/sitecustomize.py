"""What bench/memory_plateau.py loads into the server it measures (this directory first
on PYTHONPATH): on SIGUSR1 the server writes what it holds to a JSON file in
$BAMBOO_PROBE_OUT: its asyncio tasks (by coroutine), threads, gc-tracked objects (by
type) and, with BAMBOO_PROBE_TRACE=1 (tracemalloc started here), its traced memory by
file:line. The sitecustomize this one shadows (the next on PYTHONPATH) is run first."""

from __future__ import annotations

import os
import signal
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP_LINES = 400  # file:line entries kept per dump: enough to diff, small enough to read


def _run_shadowed_sitecustomize() -> None:
    # Only one module named sitecustomize is imported; the worktree shim must still run.
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        candidate = Path(entry or ".").resolve() / "sitecustomize.py"
        if candidate.parent != HERE and candidate.is_file():
            namespace = {"__name__": "_shadowed_sitecustomize", "__file__": str(candidate)}
            exec(compile(candidate.read_text(), str(candidate), "exec"), namespace)
            return


def _dump(signum: int, frame: object) -> None:
    import asyncio
    import collections
    import gc
    import json
    import threading
    import tracemalloc

    loop = asyncio._get_running_loop()
    tasks = asyncio.all_tasks(loop) if loop is not None else set()
    by_coroutine = collections.Counter(
        getattr(task.get_coro(), "__qualname__", "?") for task in tasks
    )
    objects = gc.get_objects()
    by_type = collections.Counter(type(item).__qualname__ for item in objects)
    report: dict[str, object] = {
        "tasks": len(tasks),
        "tasks_by_coroutine": by_coroutine.most_common(40),
        "threads": threading.active_count(),
        "gc_objects": len(objects),
        "objects_by_type": by_type.most_common(60),
    }
    del objects
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        report["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        report["top"] = [
            [f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}", stat.size, stat.count]
            for stat in snapshot.statistics("lineno")[:TOP_LINES]
        ]
    out = Path(os.environ["BAMBOO_PROBE_OUT"])
    count = len(list(out.glob("dump-*.json")))
    partial = out / f".dump-{count}.tmp"
    partial.write_text(json.dumps(report))
    partial.rename(out / f"dump-{count}.json")  # the driver sees whole files only


_run_shadowed_sitecustomize()
if os.environ.get("BAMBOO_PROBE_OUT"):
    if os.environ.get("BAMBOO_PROBE_TRACE") == "1":
        import tracemalloc

        tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _dump)
