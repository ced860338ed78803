"""Microbenchmark: a large publish's check against the frame limit in MessagePack
(server/decode_charge.py ``check_json_sizes``) with its bound (``msgpack_bound``: the
least of 2.3 J + 8 and J + 5 x 16,384 + J / 32,768 + 8) and, in the same invocation,
with the baseline's, 2.3 J + 8 alone (every event over the limit / 2.3 encoded a second
time), in CPU microseconds per check.

    PYTHONPATH=/work/wt/h450.shim nice .venv/bin/python -m bench.msgpack_precheck

Events near what the default limit (1 MiB less its envelope) lets through: English
and base64 text, integers, floats (16,000, about the most a frame may hold), and one
the bound does not clear, which is encoded again either way. Each figure
is the best of ``--repeats`` rounds of ``--calls`` calls (process CPU time, the least
disturbed by the machine's other work).
"""

from __future__ import annotations

import argparse
import base64
import random
import time
from collections.abc import Callable
from typing import Any

from bamboo_session.protocol.codec import JSON
from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.server import decode_charge

LIMIT = 1024 * 1024 - EVENT_ENVELOPE_BYTES
WORDS = ["the", "agent", "read", "these", "files", "before", "every", "tool", "result"]


def publish(data: Any) -> Any:
    frame = {"type": "event", "id": 1, "event": {"type": "custom", "name": "n", "data": data}}
    return JSON.decode_client(JSON.encode(frame))


def english(draw: random.Random, size: int) -> str:
    return " ".join(draw.choice(WORDS) for _ in range(size // 4))[:size]


def events() -> dict[str, Any]:
    """Events between the old bound's reach (limit / 2.3, 456 KB) and the limit, each
    within the free-form values a frame may hold (16,384)."""
    draw = random.Random(450)
    ints = [draw.randrange(10**12) for _ in range(16_000)]
    return {
        "text 600 KB": publish(english(draw, 600_000)),
        "text 950 KB": publish(english(draw, 950_000)),
        "base64 900 KB": publish(base64.b64encode(draw.randbytes(675_000)).decode()),
        "ints+text 900 KB": publish({"n": ints, "t": english(draw, 690_000)}),
        "floats+text 900": publish({"f": [0.5] * 16_000, "t": english(draw, 836_000)}),
        "text 1 MB": publish(english(draw, 1_000_000)),  # over the bound: encoded again
    }


def best(check: Callable[[], None], calls: int, repeats: int) -> float:
    rounds = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            check()
        rounds.append((time.process_time() - started) / calls)
    return min(rounds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    bound = decode_charge.msgpack_bound
    headers = decode_charge.MSGPACK_HEADERS_BYTES

    def by_bytes(size: int, values_counted: bool = True) -> float:
        return size * decode_charge.MSGPACK_PER_JSON_BYTE + headers

    for name, frame in events().items():
        size = len(JSON.encode(frame.event))

        def check(frame: Any = frame) -> None:
            decode_charge.check_json_sizes(frame, LIMIT)

        decode_charge.msgpack_bound = by_bytes
        baseline = best(check, args.calls, args.repeats)
        decode_charge.msgpack_bound = bound
        with_bound = best(check, args.calls, args.repeats)
        again = "encoded again" if bound(size) > LIMIT else "not encoded again"
        print(
            f"{name:16} json {size:>8} B, bound {bound(size):>9.0f} B ({again:17}):"
            f" baseline {baseline:6.0f} us, this {with_bound:6.0f} us,"
            f" RATIO {with_bound / baseline:.3f}"
        )


if __name__ == "__main__":
    main()
