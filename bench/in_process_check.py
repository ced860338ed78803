"""What the in-process append's checks cost, per event: ``server/commands.py``
``in_process_batch`` (what ``SessionManager.append_events``, ``append_event`` and
``add_message`` run before anything is queued) under a server's manager, whose
``max_frame_bytes`` holds each event to the frame limit.

Counted, not only timed: the C functions it calls per event (``sys.setprofile``'s
``c_call``; msgspec's encodes and decodes among them), which the load of other
processes does not move, and the best time of ``--repeats`` rounds of ``--calls``
calls. Run once per tree, with ``PYTHONPATH`` naming that tree's shim (a finder that
maps ``bamboo_session`` to it), and compare the lines:

    PYTHONPATH=/work/wt/base69.shim python -m bench.in_process_check
    PYTHONPATH=/work/wt/h465.shim python -m bench.in_process_check
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from typing import Any

from bamboo_session.protocol.messages import Message
from bamboo_session.protocol.models import AgentEvent, AnyAgentEvent, MessageEvent
from bamboo_session.server import commands

LIMIT = 1 << 20  # serve's --max-frame-bytes
MAX_EVENT_JSON = LIMIT - 1019
INBOX = (4096, 8 << 20)  # --inbox-limit, --inbox-bytes
EVENTS: dict[str, AnyAgentEvent] = {
    "token": AgentEvent.token("a streamed token"),
    "message 2 KB": MessageEvent(Message.user("x" * 2000)),
    "custom 100 values": AgentEvent.custom("n", {"v": list(range(100))}),
}


def c_calls(event: AnyAgentEvent) -> collections.Counter[str]:
    """The C functions one call for ``event`` makes, by name (after one call uncounted:
    the first makes what later ones find made)."""
    commands.in_process_batch([(event, None)], *INBOX, MAX_EVENT_JSON)
    counts: collections.Counter[str] = collections.Counter()

    def profile(_frame: Any, kind: str, arg: Any) -> None:
        if kind == "c_call":
            counts[getattr(arg, "__qualname__", repr(arg))] += 1

    sys.setprofile(profile)
    try:
        commands.in_process_batch([(event, None)], *INBOX, MAX_EVENT_JSON)
    finally:
        sys.setprofile(None)
    return counts


def best_time(event: AnyAgentEvent, calls: int, repeats: int) -> float:
    """The best of ``repeats`` rounds, in microseconds per call."""
    items = [(event, None)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            commands.in_process_batch(items, *INBOX, MAX_EVENT_JSON)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"tree: {commands.__file__}")
    for name, event in EVENTS.items():
        counts = c_calls(event)
        encodes = sum(n for fn, n in counts.items() if fn.endswith("encode"))
        micros = best_time(event, args.calls, args.repeats)
        print(
            f"{name}: {sum(counts.values())} C calls, {encodes} encodes, "
            f"{micros:.2f} us per call (best of {args.repeats} x {args.calls})"
        )


if __name__ == "__main__":
    asyncio.run(main())
