"""kill -9 of a child process that appends and prints a line per acknowledged append,
at a random instant, for the crash tests of the JSONL and SQLite stores."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path


def run_and_kill(argv: list[str], rng: random.Random, late: float) -> list[str]:
    """Start ``python argv…``, SIGKILL it at a random instant, and return its complete
    ``ack`` lines. Half the kills come during start-up and recovery; the others while it
    appends, up to ``late`` seconds after its first acknowledgement (counted from there,
    not from the start: on a busy machine, the suite running in two processes, a child
    could take longer than any fixed delay to get there)."""
    child = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        bufsize=0,  # readline takes no more than its line: communicate reads the fd itself
    )
    assert child.stdout is not None
    first = b""
    after_first_ack = rng.choice([None, rng.uniform(0.0, late)])
    if after_first_ack is None:
        time.sleep(rng.uniform(0.05, 0.3))
    else:
        first = child.stdout.readline()  # b"" if the child ended first
        time.sleep(after_first_ack)
    child.kill()
    out, err = child.communicate(timeout=30)
    assert child.returncode == -9, err.decode()
    # A line cut by the kill has no newline: it was never fully acknowledged.
    text = (first + out).decode()
    complete = text[: text.rfind("\n") + 1]
    return [line for line in complete.splitlines() if line.startswith("ack ")]


def child_argv(child: Path, target: Path, seed: int) -> list[str]:
    return [str(child), "crash", str(target), str(seed)]
