"""Read py-spy's collapsed stacks (``BENCH_PROFILE=DIR python -m bench.<script>``): the
functions with the most samples, inclusive and exclusive, for the event-loop thread.

    BENCH_PROFILE=bench/out/profile python -m bench.throughput --sessions 100
    python -m bench.profile bench/out/profile/throughput-*.txt
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_LOCATION = re.compile(r" \((?:.*/)?([^/]+\.py):\d+\)")


def frame_name(frame: str) -> str:
    """``send (websockets/asyncio/connection.py:123)`` as ``send (connection.py)``."""
    return _LOCATION.sub(r" (\1)", frame)


def summarize(paths: list[Path], top: int, thread: str) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            # py-spy may leave a line without its count (a stack it was writing when
            # the server exited): nothing to count.
            if not stack or not count_text.isdigit() or thread not in stack.split(";", 1)[0]:
                continue
            count = int(count_text)
            frames = [frame_name(f) for f in stack.split(";")[1:]]
            total += count
            for name in set(frames):
                inclusive[name] += count
            if frames:
                exclusive[frames[-1]] += count
    lines = [f"{total} samples in threads matching {thread!r}"]
    for title, counter in (("inclusive", inclusive), ("exclusive", exclusive)):
        lines.append(f"-- top {top} {title}")
        for name, count in counter.most_common(top):
            lines.append(f"{100 * count / max(total, 1):6.1f}%  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--thread", default="MainThread", help="substring of the thread label")
    args = parser.parse_args()
    print(summarize(args.paths, args.top, args.thread))
