"""kill -9 of a child process that appends and prints a line per acknowledged append,
at a random instant, for the crash tests of the JSONL and SQLite stores: timed from
its first line or its n-th acknowledgement (:func:`run_and_kill`), or from its
``count``-th line of a kind (:func:`run_and_kill_after`); rounds of those until enough
appends were acknowledged (:func:`kill_rounds`). The children are forked once their
imports are done (tests/forks.py)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.forks import ForkedChild


def run_and_kill(argv: list[str], rng: random.Random, late: float, acks: int = 0) -> list[str]:
    """Start ``python argv…``, SIGKILL it at a random instant, and return its complete
    ``ack`` lines. Half the kills come during start-up and recovery; the others while it
    appends, up to ``late`` seconds after its first line (the children print ``ready``
    once their store is open; counted from there, not from the start: on a busy
    machine, the suite running in two processes, a child could take longer than any
    fixed delay to get there). With ``acks``, the kill always comes while it appends:
    up to ``late`` seconds after its ``acks``-th acknowledgement, however long a busy
    machine takes to get there."""
    child = _start(argv)
    assert child.stdout is not None
    read = b""
    if acks:
        read = _read_until(child, b"ack ", acks)
        time.sleep(rng.uniform(0.0, late))
        return _kill(child, read)
    after_first_line = rng.choice([None, rng.uniform(0.0, late)])
    if after_first_line is None:
        time.sleep(rng.uniform(0.05, 0.3))
    else:
        read = child.stdout.readline()  # b"" if the child ended first
        time.sleep(after_first_line)
    return _kill(child, read)


def kill_rounds(
    run_round: Callable[[int, int], list[str]],
    check: Callable[[list[str]], None],
    rounds: int,
    enough: int,
) -> int:
    """``rounds`` rounds of ``run_round(seed, 0)``, each round's acknowledged lines handed
    to ``check``; the total acknowledged. Half the kills come during start-up, the
    others soon after it: on a busy machine those rounds may acknowledge little, so when
    they acknowledged fewer than ``enough``, one more round (``acks``: what is missing)
    waits for them, then kills at a random instant (a count, not a speed)."""
    total = 0
    for seed in range(rounds):
        lines = run_round(seed, 0)
        check(lines)
        total += len(lines)
    if total < enough:
        lines = run_round(rounds, enough - total)
        check(lines)
        total += len(lines)
    return total


def _read_until(child: ForkedChild, prefix: bytes, count: int) -> bytes:
    """The child's lines up to its ``count``-th that starts with ``prefix`` (fewer if it
    ended first: its stderr then says why)."""
    assert child.stdout is not None
    read = bytearray()
    seen = 0
    while seen < count:
        line = child.stdout.readline()
        if not line:
            break
        read += line
        seen += line.startswith(prefix)
    return bytes(read)


def run_and_kill_after(argv: list[str], rng: random.Random, marker: str, count: int) -> list[str]:
    """Start ``python argv…``, let it print ``count`` lines that start with ``marker``,
    then SIGKILL it at a random instant within about the next two of them, and return
    its complete ``ack`` lines. The kill is timed by the child's own progress, not by
    the clock from its start: the delay is drawn up to twice the mean interval between
    those lines as the parent saw them, however long a busy machine makes them (a
    fixed delay from the start, under load, ended children before their first one)."""
    child = _start(argv)
    assert child.stdout is not None
    read = bytearray()
    seen: list[float] = []
    prefix = marker.encode()
    while len(seen) < count:
        line = child.stdout.readline()
        if not line:  # the child ended first: its stderr says why, below
            break
        read += line
        if line.startswith(prefix):
            seen.append(time.monotonic())
    if len(seen) > 1:
        interval = (seen[-1] - seen[0]) / (len(seen) - 1)
        time.sleep(rng.uniform(0.0, min(2 * interval, 2.0)))
    return _kill(child, bytes(read))


def _start(argv: list[str]) -> ForkedChild:
    """``python argv…``, forked from a process whose imports are done (tests/forks.py);
    its stdout unbuffered, so that readline takes no more than its line."""
    return ForkedChild(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _kill(child: ForkedChild, read: bytes) -> list[str]:
    """SIGKILL the child; its complete ``ack`` lines, ``read`` already and the rest."""
    child.kill()
    out, err = child.communicate(timeout=30)
    assert child.returncode == -9, err.decode()
    # A line cut by the kill has no newline: it was never fully acknowledged.
    text = (read + out).decode()
    complete = text[: text.rfind("\n") + 1]
    return [line for line in complete.splitlines() if line.startswith("ack ")]


def child_argv(child: Path, target: Path, seed: int) -> list[str]:
    return [str(child), "crash", str(target), str(seed)]
