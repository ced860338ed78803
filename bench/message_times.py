"""Microbenchmark: what reading a message's time by truncation (protocol/time_fractions.py)
costs ``Codec.decode_weighed``, per frame, in ns, against a baseline tree in the same
invocation: a streamed token (which looks no further), messages without a time, with
a time of 6 fractional digits (read for its times alone, skipping the rest) and of 7
(read again), in both codecs, small and of some 900 KB.

Each tree runs in a child process of its own, its shim on PYTHONPATH; the children
take turns, ``--rounds`` times, and each figure is the best of a tree's rounds (each
the best of ``--repeats`` runs of ``--calls`` calls), the least disturbed by the
machine's other work; the ratio is the tree's over the baseline's:

    .venv/bin/python bench/message_times.py --tree /work/wt/r477.shim --baseline /tmp/before.shim
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import msgspec
from bamboo_session.protocol.codec import JSON, MSGPACK

calls, repeats = int(sys.argv[1]), int(sys.argv[2])
def message(content, created_at=None):
    sent = {"role": "user", "content": content, "metadata": {"k": [1, 2]}}
    if created_at is not None:
        sent["created_at"] = created_at
    return {"type": "message", "id": 1, "message": sent}
token = {"type": "event", "id": 1, "event": {"type": "token", "content": "hello world, here"}}
six, seven = "2024-05-01T12:00:00.123456Z", "2024-05-01T12:00:00.1234567Z"
big = "words and more words " * 45_000
frames = {}
for name, codec, encode in (("JSON", JSON, lambda f: msgspec.json.encode(f).decode()),
                            ("msgpack", MSGPACK, msgspec.msgpack.encode)):
    frames[f"{name} token"] = (codec, encode(token), calls)
    for label, content, times in (("small", "hi", calls), ("900 KB", big, max(calls // 2000, 5))):
        for digits, created_at in (("no time", None), ("6 digits", six), ("7 digits", seven)):
            frames[f"{name} message {label}, {digits}"] = (
                codec, encode(message(content, created_at)), times
            )
found = {}
for name, (codec, frame, times) in frames.items():
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(times):
            codec.decode_weighed(frame)
        best = min(best, (time.perf_counter_ns() - started) / times)
    found[name] = best
print(json.dumps(found))
"""


def run(shim: str, calls: int, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": shim}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls), str(repeats)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    found: dict[str, float] = json.loads(out)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", required=True, help="the shim of the tree measured")
    parser.add_argument("--baseline", required=True, help="the shim of the baseline tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {"tree": {}, "baseline": {}}
    for _ in range(args.rounds):
        for which, shim in (("baseline", args.baseline), ("tree", args.tree)):
            for name, ns in run(shim, args.calls, args.repeats).items():
                best[which][name] = min(ns, best[which].get(name, float("inf")))
    print(f"{'frame':36s} {'baseline ns':>12s} {'tree ns':>12s} {'ratio':>6s}")
    for name, base in best["baseline"].items():
        tree = best["tree"][name]
        print(f"{name:36s} {base:12.0f} {tree:12.0f} {tree / base:6.3f}")


if __name__ == "__main__":
    main()
