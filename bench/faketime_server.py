"""``python -m bench.faketime_server serve …``: the server's command line, for a process
run under libfaketime with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (bench/clock_jump.py,
tests/faketime_support.py).

libfaketime 0.9.10 (Debian 12's) fails ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)`` with EINVAL when it leaves the monotonic clock alone, and CPython's
``time.sleep`` is that call: ``subprocess.Popen.wait(timeout)`` (the JSONL store's sync
helper, at a stop, when the helper has not exited at the first look) raised ``OSError:
[Errno 22]`` and the server exited 1 instead of stopping (2 stops of 6). Why: its
``clock_nanosleep`` takes every absolute deadline for a faked time, ``start.mon + (req -
faked start)``, without looking at ``FAKETIME_DONT_FAKE_MONOTONIC``, so a real monotonic
deadline becomes a negative one (strace: ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME, {tv_sec=-1796391612, …}) = -1 EINVAL``, with ``FAKETIME=+0`` too).
Upstream honours the setting there since 0.9.11 (commits d17bb11, f262b5f, 0c2e3d4,
issue #426). No setting of 0.9.10 helps: ``FAKETIME_FORCE_MONOTONIC_FIX`` is
``pthread_cond_timedwait``'s only, and faking the monotonic clock too (no
``FAKETIME_DONT_FAKE_MONOTONIC``) mends the sleep but hangs every timed wait of a lock,
an event or a queue: ``sem_clockwait``, which CPython's locks wait with, is not
wrapped, and the futex gets the faked deadline (``threading.Event().wait(0.3)`` never
returned), beside moving the monotonic clock with every change of the offset file. A
sleep through ``select``, which the library passes through, does the same wait. Nothing
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
