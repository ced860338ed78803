"""Where a server's CPU per event goes, by process and thread: bench/latency.py's open
loop, each server's CPU over the measured phase split into its event loop's thread, its
other threads (the JSONL store's file jobs and syncs) and its children (the JSONL
store's sync helper), each as user and system time (``/proc/PID/task/TID/stat``, in
clock ticks) and run time (``schedstat``, to the nanosecond); with ``perf`` on the path,
the helper's ``fdatasync`` calls per event too (a tracepoint count: how many group
commits the events took); and how often the loop's thread and the helper slept and
were woken (their voluntary context switches: a wake-up of an idle CPU costs tens of
microseconds on this VM, bench/RESULTS.md's h462 section, whatever the code does then).
Per measured event; the same arguments as bench/latency.py:

    python -m bench.cpu_split --rate 2000 --sessions 200 --seconds 10 --peers \
        --durability fsync memory
    python -m bench.cpu_split --variant b0=busy_window=0 -- --rate 2000 --sessions 200 \
        --seconds 10 --peers socketio --durability fsync b0   # store variants (latency_variants)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import common, latency, latency_variants

TICK = os.sysconf("SC_CLK_TCK")
# part: [user, system, run] seconds; "syncs": [count]; part + " sleeps": [count]
Split = dict[str, list[float]]


def split(pid: int) -> Split:
    parts: Split = {}
    for process, main, others in [(pid, "loop", "threads")] + [
        (child, "helper", "helper") for child in common._children(pid)
    ]:
        for tid in os.listdir(f"/proc/{process}/task"):
            task = f"/proc/{process}/task/{tid}"
            try:
                fields = Path(f"{task}/stat").read_text().rsplit(")", 1)[1].split()
                run = int(Path(f"{task}/schedstat").read_text().split()[0]) / 1e9
            except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                continue
            part = parts.setdefault(main if int(tid) == process else others, [0.0, 0.0, 0.0])
            part[0] += int(fields[11]) / TICK
            part[1] += int(fields[12]) / TICK
            part[2] += run
            if int(tid) == process:
                parts[f"{main} sleeps"] = [float(_voluntary_switches(task))]
    return parts


def _voluntary_switches(task: str) -> int:
    """How many times the thread gave up the CPU waiting (``epoll_wait`` blocking, a
    ``recvmsg`` with nothing to read): each is a later wake-up."""
    try:
        for line in Path(f"{task}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Watch:
    """Splits taken at bench/latency.py's two CPU readings of each server."""

    def __init__(self) -> None:
        self.splits: list[Split] = []
        self.perf: subprocess.Popen[bytes] | None = None
        self.perf_out = Path(tempfile.mkstemp(prefix="bamboo-cpu-split-")[1])

    def cpu_seconds(self, pid: int) -> float:
        self.splits.append(split(pid))
        children = common._children(pid)
        if len(self.splits) % 2:  # the phase begins
            if children and shutil.which("perf"):
                event = "syscalls:sys_enter_fdatasync"
                pids = ",".join(map(str, children))
                argv = ["perf", "stat", "-x,", "-e", event, "-p", pids, "-o", str(self.perf_out)]
                self.perf = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        elif self.perf is not None:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait()
            self.perf = None
            for line in self.perf_out.read_text().splitlines():
                fields = line.split(",")
                if fields[0].strip().isdigit():
                    self.splits[-1]["syncs"] = [float(fields[0])]
        return REAL_CPU_SECONDS(pid)

    def summarize(self, kind: str, args: Any, results: Any, samples: Any, server_cpu: float) -> Any:
        before, after = self.splits[-2], self.splits[-1]
        events = len(samples)
        shown = [f"{server_cpu / events * 1e6:.1f} us/event"]
        for part, times in after.items():
            if part == "syncs":
                shown.append(f"helper fdatasync {times[0] / events:.3f}/event")
                continue
            if part.endswith(" sleeps"):
                was_count = before.get(part, [0.0])[0]
                shown.append(f"{part} {(times[0] - was_count) / events:.3f}/event")
                continue
            was = before.get(part, [0.0, 0.0, 0.0])
            per = [(now - then) / events * 1e6 for now, then in zip(times, was, strict=True)]
            shown.append(f"{part}: user {per[0]:.1f} sys {per[1]:.1f} run {per[2]:.1f}")
        print(f"CPU SPLIT {kind} ({events} events): " + "; ".join(shown), flush=True)
        return SUMMARIZE(kind, args, results, samples, server_cpu)


REAL_CPU_SECONDS = common.cpu_seconds
SUMMARIZE = latency.summarize

if __name__ == "__main__":
    watch = Watch()
    common.cpu_seconds = watch.cpu_seconds
    latency.summarize = watch.summarize  # type: ignore[assignment]
    argv = sys.argv[1:]
    if any(arg.startswith("--variant") for arg in argv):
        args = latency_variants.parse_args(argv)[1]
    else:
        args = latency.parse_args(argv)
    try:
        common.run(latency.main(args))
    finally:
        watch.perf_out.unlink(missing_ok=True)
