"""What a process of the server or of a bench sets up once at its start: its standard
streams filled where it was started without them, its open-file limit raised, the
garbage collector settled, and rich left out of a server that logs JSON. Standard
library only: bench drivers and workers import it at their start, where
the server's CLI (logging, the app, the client tools) cost each a third of a second of
CPU for two functions.
"""

from __future__ import annotations

import gc
import os
import resource
import sys


def fill_closed_standard_streams() -> None:
    """Opens the null device as each of stdin, stdout and stderr that the process was
    started without (``>&-``): the next file or socket opened took its number otherwise,
    and uvloop aborts when it closes a socket numbered 0 to 2 (``serve >&-`` died of
    SIGABRT at its stop), while Python's ``sys.stdout`` was None (a tool's output, or
    ``--version``, a traceback). Stdout's is opened read-only: a write to it fails as it
    would have, "Bad file descriptor", which the command says (status 1) rather than
    drop its output without a word."""
    for number, name, flags in (
        (0, "stdin", os.O_RDONLY),
        (1, "stdout", os.O_RDONLY),
        (2, "stderr", os.O_WRONLY),
    ):
        try:
            os.fstat(number)
            continue
        except OSError:
            pass
        opened = os.open(os.devnull, flags)
        if opened != number:
            os.dup2(opened, number)
            os.close(opened)
        buffering = 1 if number == 2 else -1  # (stderr line by line, as Python's own)
        mode = "r" if number == 0 else "w"
        stream = open(number, mode, buffering=buffering, closefd=False)  # noqa: SIM115
        setattr(sys, name, stream)


# The most macOS grants a process whatever its hard limit says (OPEN_MAX).
DARWIN_OPEN_MAX = 10240


def raise_open_file_limit(wanted: int = 1 << 20) -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as its hard limit allows (as
    other servers do; the soft limit is often 1,024, too few for a thousand peers and
    their sessions' logs); the soft limit now. Where the kernel refuses that much
    (macOS: an unlimited hard limit, yet no more than OPEN_MAX), it asks for less, and
    failing that leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    for asked in (target, min(target, DARWIN_OPEN_MAX)):
        if asked <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (asked, hard))
        except (ValueError, OSError):
            continue
        break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Allocations between two collections of the youngest generation (CPython's default is
# 700): a server allocates a few objects per frame, nearly all freed by reference
# counting, so the default collects every few hundred frames for little.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once started: what exists now (modules, the index of every stored session) moves
    out of the collector's sight (gc.freeze), and young collections come less often.
    Cyclic garbage is still collected; the collector just stops re-walking objects that
    live as long as the process. ``serve`` settles it before it listens. Only the young
    generations are collected first, not the whole heap: the imports and the store's
    open leave no cyclic garbage that grows with the store (a full collection there
    freed 5 objects, with 1,000 sessions as with none), and a full one walks every
    object, the index's too (with 1,000 sessions 10-20 ms of a 0.3 s start, against
    0.3-4.7 ms; 100,000 sessions: 0.2 s and more; bench/restart_park.py)."""
    gc.collect(1)
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def logs_as_json(log_format: str) -> bool:
    """Whether a server's log is JSON lines: ``json``, or ``auto`` where stderr is not a
    terminal; else it is the console's."""
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def leave_rich_out() -> None:
    """Makes ``import rich`` fail in this process, unless it is imported already.

    structlog imports rich, where it is installed, whatever it is asked to render: its
    console renderer draws tracebacks with it, and that import is a seventh of a
    server's start. A server that logs JSON lines never draws one (its tracebacks are JSON, their
    frames' locals not shown), and structlog takes rich as not installed. A ``None`` in
    ``sys.modules`` is how Python marks a module that must not be imported; call this
    before structlog is first imported, and only in a process that logs JSON."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
