"""``python -m bench.faketime_server serve …``: the server's command line, for a process
run under libfaketime with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (bench/clock_jump.py).

libfaketime 0.9.10 fails ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` with
EINVAL when it leaves the monotonic clock alone, and CPython's ``time.sleep`` is that
call: ``subprocess.Popen.wait(timeout)`` (the JSONL store's sync helper, at a stop)
raised ``OSError: [Errno 22]`` and the server exited 1 instead of stopping. A sleep
through ``select``, which the library passes through, does the same wait. Nothing
else of the server changes."""

from __future__ import annotations

import select
import sys
import time


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


if __name__ == "__main__":
    time.sleep = _sleep  # type: ignore[assignment]  # (a float is all the server sleeps for)
    from bamboo_session.server.cli import main

    sys.exit(main())
