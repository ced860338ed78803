"""Writes tests/durations.txt from a run's ``--durations`` lines, read on stdin:

    make pytest PYTEST_ARGS=--durations=80 | python tests/record_durations.py

Each test module's seconds are the sum of its tests among those lines (setup, call and
teardown), its slowest first. The conftest starts those modules first (see
``pytest_collection_modifyitems`` there); a module the lines leave out runs after them
in its usual place, so the file need only be kept roughly current.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

DURATIONS_FILE = Path(__file__).resolve().parent / "durations.txt"
# "12.34s call     tests/test_x.py::test_y[param]"
_DURATION_LINE = re.compile(r"^(\d+(?:\.\d+)?)s\s+(?:setup|call|teardown)\s+([^:\s]+)::")


def module_seconds(lines: list[str]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for line in lines:
        match = _DURATION_LINE.match(line.strip())
        if match:
            totals[match.group(2)] += float(match.group(1))
    return dict(totals)


def main() -> None:
    totals = module_seconds(sys.stdin.readlines())
    ranked = sorted(totals.items(), key=lambda entry: (-entry[1], entry[0]))
    header = "# seconds module: written by tests/record_durations.py; slowest start first\n"
    DURATIONS_FILE.write_text(header + "".join(f"{s:.1f} {m}\n" for m, s in ranked))


if __name__ == "__main__":
    main()
