"""Run every bench script, one after another, and plot the results beside RESULTS.md.

    python -m bench.run_all                 # small sizes: a few minutes (``make bench``)
    BENCH_FULL=1 python -m bench.run_all    # the sizes of the issue (``make bench BENCH_FULL=1``)
    python -m bench.run_all throughput latency   # only these

Each script prints its figures and ``RATIO`` lines and writes JSON to bench/out/; the
plots (latency.png, throughput.png) are drawn from that JSON. Figures worth keeping go
into bench/RESULTS.md by hand, with the command and ``nproc``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from . import common

SCRIPTS = (
    "throughput",
    "latency",
    "connections",
    "reconnect_storm",
    "missed_storm",
    "storage_bench",
)
SCRIPT_TIMEOUT = 3600


def run_script(name: str) -> bool:
    path = common.BENCH_DIR / f"{name}.py"
    if not path.exists():
        print(f"== {name}: bench/{name}.py not written yet, skipped", flush=True)
        return True
    argv = [sys.executable, "-m", f"bench.{name}"]
    if name != "storage_bench":  # another helper's script, with its own options
        argv += ["--json", str(common.OUT_DIR / f"{name}.json")]
    print(f"== {name}: {' '.join(argv[1:])} (nproc {os.cpu_count()})", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.run(argv, cwd=common.ROOT, timeout=SCRIPT_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        print(f"== {name}: timed out after {SCRIPT_TIMEOUT} s", flush=True)
        return False
    print(f"== {name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
    return code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT", help=", ".join(SCRIPTS))
    args = parser.parse_args()
    unknown = set(args.scripts) - set(SCRIPTS)
    if unknown:
        parser.error(f"unknown scripts: {', '.join(sorted(unknown))}")
    mode = "full" if common.full_mode() else "default"
    print(f"bench: {mode} sizes, nproc {os.cpu_count()}", flush=True)
    common.OUT_DIR.mkdir(parents=True, exist_ok=True)
    ok = all([run_script(name) for name in args.scripts or SCRIPTS])
    from .plot import plot_all

    for path in plot_all(common.OUT_DIR, common.BENCH_DIR):
        print(f"plotted {path.relative_to(common.ROOT)}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
