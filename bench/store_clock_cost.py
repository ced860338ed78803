"""What a local store's clock (persistence/clock.py) costs per time it gives, against
reading the wall clock (``utcnow``): ``stamp`` (once per append call and state write)
and ``now`` (once per look, attach, HTTP read and delivered batch), on the wall
clock's own pace and held ahead of it (a store holding times a day on: since h364 it
runs at half speed there, where it stood still); and, where the tree has it, what the
JSONL store adds to each change it writes lazily (a state move, a touch: since h364
the change's time goes to its clock mark, persistence/jsonl/clock_mark.py, one
``pwrite`` on the loop).

Each figure is the best of ``--rounds`` runs of ``--calls`` calls (``timeit``), in
this process, of the tree it imports (a worktree's through its shim on PYTHONPATH).

Run: ``python -m bench.store_clock_cost [--calls 200000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import timeit
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bamboo_session.persistence.clock import StoreClock
from bamboo_session.protocol.models import utcnow


def best(call: Callable[[], object], calls: int, rounds: int) -> float:
    """Microseconds a call, the best of ``rounds``."""
    return min(timeit.repeat(call, number=calls, repeat=rounds)) / calls * 1e6


def clocks() -> dict[str, StoreClock]:
    ahead = StoreClock()
    ahead.saw(utcnow() + timedelta(days=1))
    return {"at the wall clock": StoreClock(), "held a day ahead": ahead}


def lazy_change(directory: Path) -> Callable[[], object] | None:
    """A stamp and its mark, as a JSONL state move makes them; None before h364."""
    if importlib.util.find_spec("bamboo_session.persistence.jsonl.clock_mark") is None:
        return None
    from bamboo_session.persistence.jsonl.clock_mark import ClockMarkFile

    clock, mark = StoreClock(), ClockMarkFile(directory)
    mark.open()
    return lambda: mark.wrote(clock.stamp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    wall = best(utcnow, args.calls, args.rounds)
    print(f"utcnow: {wall:.2f} us")
    for name, clock in clocks().items():
        for what, call in (("stamp", clock.stamp), ("now", clock.now)):
            cost = best(call, args.calls, args.rounds)
            print(f"{what}, {name}: {cost:.2f} us")
            print(f"RATIO store clock {what} {name}/utcnow = {cost / wall:.3f}")
    with tempfile.TemporaryDirectory() as directory:
        if (change := lazy_change(Path(directory))) is not None:
            cost = best(change, args.calls, args.rounds)
            print(f"stamp and JSONL mark: {cost:.2f} us")
            print(f"RATIO store clock stamp and JSONL mark/utcnow = {cost / wall:.3f}")


if __name__ == "__main__":
    main()
