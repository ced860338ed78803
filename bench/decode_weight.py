"""Microbenchmark: ``Codec.decode_weighed`` per frame, in ns, for the frames a queued
request is weighed by (protocol/free_form.py ``held_at_most``): small MessagePack and
JSON frames, ASCII and CJK, and 2 KiB ones whose strings are walked.

It imports ``bamboo_session`` from whichever tree the interpreter's path gives, so one
copy of it measures two trees (run it by its path with each tree's shim on PYTHONPATH):

    PYTHONPATH=/work/wt/h388.shim nice .venv/bin/python bench/decode_weight.py
    PYTHONPATH=/tmp/before.shim nice .venv/bin/python bench/decode_weight.py

Each figure is the best of ``--repeats`` rounds of ``--calls`` calls (the least
disturbed by the machine's other work).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bamboo_session.protocol.codec import JSON, MSGPACK

CJK = "\N{CJK UNIFIED IDEOGRAPH-4E2D}\N{CJK UNIFIED IDEOGRAPH-6587}"


def token(content: str) -> dict[str, Any]:
    return {"type": "event", "id": 1, "event": {"type": "token", "content": content}}


def message(content: str) -> dict[str, Any]:
    return {"type": "message", "id": 1, "message": {"role": "user", "content": content}}


def frames() -> dict[str, tuple[Callable[[Any], Any], bytes | str]]:
    """name: (the codec's decode_weighed, the frame)."""
    packed, text = msgspec.msgpack.encode, msgspec.json.encode
    return {
        "msgpack token ASCII": (MSGPACK.decode_weighed, packed(token("hello world, here"))),
        "msgpack token CJK": (MSGPACK.decode_weighed, packed(token(CJK * 4))),
        "JSON token CJK": (JSON.decode_weighed, text(token(CJK * 4)).decode()),
        "JSON token ASCII": (JSON.decode_weighed, text(token("hello world, here")).decode()),
        "msgpack message CJK 2 KiB": (MSGPACK.decode_weighed, packed(message(CJK * 340))),
        "JSON message CJK 2 KiB": (JSON.decode_weighed, text(message(CJK * 340)).decode()),
    }


def best_ns(call: Callable[[Any], Any], frame: bytes | str, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call(frame)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for name, (call, frame) in frames().items():
        weight = call(frame)[2]
        ns = best_ns(call, frame, args.calls, args.repeats)
        print(f"{name:28s} {len(frame):5d} B  weight {weight:6d}  {ns:7.0f} ns", flush=True)


if __name__ == "__main__":
    main()
