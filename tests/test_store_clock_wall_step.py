"""A store's clock (persistence/clock.py) under real steps of its machine's clock, read
through its common path (the wall clock past the newest time, given as it is): stepped
back an hour, it holds the times ahead and runs at half speed, with a warning; stepped
forward to the true time, it gives the wall clock's again and says it has caught up;
stepped back again, it holds from the newest time it gave, at half speed again, not
from where it was held the first time (which would stand it still, a microsecond a
stamp). Every stamp later than the one before.

A real memory store in a child process under libfaketime (tests/
store_clock_step_child.py; skipped without it: apt-get install faketime), its
monotonic clock left alone: what the held clock runs on, read around each stamp, so no
timing is assumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bamboo_session.persistence.clock import HELD_RATE
from tests.faketime_support import LIBFAKETIME, needs_libfaketime

CHILD = Path(__file__).with_name("store_clock_step_child.py")
HOUR = 3600.0


Stamp = dict[str, float]  # an event's ts, the monotonic clock around it, the wall clock


def run_child(tmp_path: Path) -> tuple[list[list[Stamp]], list[str]]:
    """The child's stamps, phase by phase, and its store clock's log lines."""
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
    }
    done = subprocess.run(
        [sys.executable, str(CHILD), str(offset)], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    found = json.loads(done.stdout)
    return found["phases"], found["log"]


def assert_half_speed(first: Stamp, second: Stamp) -> None:
    """Held: half the monotonic time between two stamps at least (the clock reads it in
    between), and less than all of it."""
    assert second["ts"] - first["ts"] >= (second["before"] - first["after"]) * HELD_RATE
    assert second["ts"] - first["ts"] < second["after"] - first["before"]


@needs_libfaketime
def test_the_clock_holds_through_steps_back_and_catches_up_between(tmp_path: Path) -> None:
    phases, log = run_child(tmp_path)
    steady, back, forward, back_again = phases
    stamps = [stamp["ts"] for phase in phases for stamp in phase]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # always later
    for stamp in (*steady, *forward):  # the wall clock's own time
        assert abs(stamp["ts"] - stamp["wall"]) < 1.0
    for stamp in (*back, *back_again):  # held about an hour ahead of the wall clock
        assert HOUR - 5 < stamp["ts"] - stamp["wall"] < HOUR + 1
    assert_half_speed(*back)
    assert_half_speed(*back_again)
    # Held again from the newest time given (the caught-up wall clock's), not from the
    # time held the first time: the first stamp after the step is just past it.
    assert back_again[0]["ts"] - forward[1]["ts"] < back_again[0]["after"] - forward[1]["before"]
    # Warned at each step back (a new episode once caught up), the catch-up said once.
    assert [line.split(" ", 1)[0] for line in log] == ["WARNING", "INFO", "WARNING"], log
    assert "caught up" in log[1]
