"""The server side of bench/bytecode_count.py: counts the bytecodes its main thread runs.

Imported by the boot code bytecode_count starts the server with, before the server's
own code (``install``); does nothing unless ``BAMBOO_OPCODES=FILE`` is set. Then
SIGUSR1 starts counting and SIGUSR2 stops it and writes the counts to FILE. Between
the two, a ``sys.settrace`` tracer with ``f_trace_opcodes`` counts every bytecode the
server's event-loop thread executes, per code object (file, function). Python 3.11 has
no ``sys.monitoring``; the tracer is slow (tens of times), so only the measured phase
pays for it, and only counts, never times, come out of it.

Both signals are answered with a marker file (``FILE.started``, then FILE itself,
written whole by a rename), for the driver to wait on: Python runs a signal handler
between two bytecodes of the main thread, so the driver knows where the phase begins.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import defaultdict
from types import CodeType, FrameType
from typing import Any

ENV = "BAMBOO_OPCODES"

_counts: defaultdict[CodeType, int] = defaultdict(int)
_calls: defaultdict[CodeType, int] = defaultdict(int)  # entries, a coroutine's resumptions too


def _in_frame(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        _counts[frame.f_code] += 1
    return _in_frame


def _on_call(frame: FrameType, event: str, arg: Any) -> Any:
    # Every frame the thread enters or resumes (a coroutine's step is a "call" too).
    _calls[frame.f_code] += 1
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    return _in_frame


def _start(path: str) -> None:
    _counts.clear()
    _calls.clear()
    with open(path + ".started", "w") as marker:
        marker.write(str(os.getpid()))
    sys.settrace(_on_call)


def _stop(path: str) -> None:
    sys.settrace(None)
    rows = [
        [code.co_filename, code.co_qualname, code.co_firstlineno, count, _calls[code]]
        for code, count in _counts.items()
        if code.co_filename != __file__
    ]
    with open(path + ".tmp", "w") as out:
        json.dump({"pid": os.getpid(), "functions": rows}, out)
    os.replace(path + ".tmp", path)


def install() -> None:
    """Arms the two signals if ``BAMBOO_OPCODES`` names the output file."""
    path = os.environ.get(ENV)
    if not path:
        return
    signal.signal(signal.SIGUSR1, lambda _n, _f: _start(path))
    signal.signal(signal.SIGUSR2, lambda _n, _f: _stop(path))
