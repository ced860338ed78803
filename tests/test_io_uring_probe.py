"""bench/io_uring_probe.py runs at a tiny size, so it does not rot: every mode it can run
here completes and prints its ratio lines, its files are gone, and without the liburing
module the io_uring modes are skipped in one line. Never asserts speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.io_uring_ring import ring_unavailable

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--rounds", "2", "--commits", "5", "--rate", "1000"]
RING_UNAVAILABLE = ring_unavailable()


def run_probe(tmp_path: Path, *args: str, prelude: str = "") -> str:
    code = (
        f"import runpy, sys; {prelude}"
        f"sys.argv = ['io_uring_probe', *{[*TINY, '--dir', str(tmp_path), *args]!r}]; "
        "runpy.run_module('bench.io_uring_probe', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []  # every WAL-like file is gone
    return done.stdout


def test_the_probe_measures_the_helper_and_the_threads(tmp_path: Path) -> None:
    stdout = run_probe(tmp_path, "--modes", "none", "inline", "helper", "thread", "pool")
    for mode in ("inline", "thread", "pool"):
        assert f"RATIO io_uring_probe CPU {mode}/helper = " in stdout
    assert sum(line.startswith("round ") for line in stdout.splitlines()) == 2 * 5
    helper_lines = [line for line in stdout.splitlines() if " helper " in line[:25]]
    # The helper's own CPU is counted beside this process's.
    assert all("helper   0.0;" not in line for line in helper_lines), helper_lines


@pytest.mark.skipif(RING_UNAVAILABLE is not None, reason=f"io_uring: {RING_UNAVAILABLE}")
def test_the_probe_syncs_through_io_uring_and_sees_its_errors(tmp_path: Path) -> None:
    stdout = run_probe(tmp_path, "--modes", "helper", "uring-fsync", "uring-linked", "uring-ringfd")
    for mode in ("uring-fsync", "uring-linked", "uring-ringfd"):
        assert f"check {mode}: a pipe's fsync failed as it should" in stdout
        assert f"RATIO io_uring_probe CPU {mode}/helper = " in stdout
    # io_uring's workers are threads of this process: their CPU is in its own.
    assert "iou-wrk" in stdout


def test_the_io_uring_modes_are_skipped_in_one_line_without_liburing(tmp_path: Path) -> None:
    stdout = run_probe(
        tmp_path, "--modes", "none", "uring-fsync", prelude="sys.modules['liburing'] = None; "
    )
    skipped = [line for line in stdout.splitlines() if "skipped" in line]
    assert skipped == [
        "io_uring modes skipped: the liburing module is not installed (pip install liburing)"
    ]
    assert "round 1 none" in stdout
