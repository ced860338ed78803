"""Logging: JSON lines, and tracebacks that never carry local variables (a request's
locals hold its headers, bearer tokens among them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.server_process import ROOT

_CHILD = """
import sys

log_format = sys.argv[1]
if log_format == "console-without-rich":
    sys.modules["rich"] = None  # as structlog finds it where rich is not installed

import structlog
from bamboo_session.server.logs import configure_logging

configure_logging(log_format.removesuffix("-without-rich"), "info")

def handle(authorization):
    raise RuntimeError("boom")

try:
    handle("Bearer eyJsecret.token.value")
except RuntimeError:
    structlog.get_logger("test").exception("request failed")
"""


def run_child(script: str, log_format: str) -> subprocess.CompletedProcess[str]:
    """``script`` run in a child with ``log_format``; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script, log_format],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done


def logged_by_child(log_format: str) -> str:
    return run_child(_CHILD, log_format).stderr


def test_a_logged_traceback_has_no_locals() -> None:
    (line,) = logged_by_child("json").strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "request failed" and record["level"] == "error"
    assert "RuntimeError" in json.dumps(record["exception"])  # the traceback is there
    assert "eyJsecret" not in line  # its frames' locals are not


@pytest.mark.parametrize("rich_installed", [True, False])
def test_a_traceback_on_the_console_has_no_locals_either(rich_installed: bool) -> None:
    # rich draws a frame's locals by default; without rich, the plain traceback.
    log_format = "console" if rich_installed else "console-without-rich"
    said = logged_by_child(log_format)
    assert "request failed" in said and "RuntimeError: boom" in said
    assert "handle" in said  # the frames are there
    assert "eyJsecret" not in said


_CONSOLE_RECORD = re.compile(r"\S+Z \[info\s*\] record\s+n=(?P<n>\d+) worker=(?P<worker>\d)")
_JSON_RECORD = re.compile(
    r'\{"worker":"(?P<worker>\d)","n":(?P<n>\d+),"event":"record","level":"info",'
    r'"timestamp":"[^"]+"\}'
)
_WORKER = """
import sys
import structlog
from bamboo_session.server.logs import configure_logging

configure_logging(sys.argv[1], "info")
log = structlog.get_logger("test")
sys.stdin.readline()  # both start together, so that their writes overlap
for n in range(int(sys.argv[3])):
    log.info("record", worker=sys.argv[2], n=n)
"""


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_two_processes_logging_into_one_pipe_keep_their_lines_whole(log_format: str) -> None:
    """`serve --workers N` shares one stderr between its workers: a record must reach it
    in one write, or another worker's record can land inside it (the console format
    wrote a record's text and its newline apart)."""
    records = 1000  # the two ran into each other within the first 100 in every run
    read_end, write_end = os.pipe()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, log_format, str(worker), str(records)],
            stdin=subprocess.PIPE,
            stderr=write_end,
            cwd=ROOT,
            # Unbuffered, each write is its own system call: buffered, print's text and
            # newline reached the pipe together (but for a record of several lines), and
            # the test passed whether or not a record was one write.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
        )
        for worker in range(2)
    ]
    os.close(write_end)
    try:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.close()
        with os.fdopen(read_end, encoding="utf-8") as pipe:
            lines = pipe.read().splitlines()
        for worker in workers:
            assert worker.wait(timeout=60) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    pattern = _JSON_RECORD if log_format == "json" else _CONSOLE_RECORD
    broken = [line for line in lines if not pattern.fullmatch(line)]
    assert not broken, broken[:3]
    seen = sorted((int(m["worker"]), int(m["n"])) for m in map(pattern.fullmatch, lines) if m)
    assert seen == [(worker, n) for worker in range(2) for n in range(records)]


_EVERY_KIND = """
import io, json, logging, sys, warnings

class Writes(io.RawIOBase):
    def __init__(self):
        self.writes = []
    def writable(self):
        return True
    def write(self, data):
        self.writes.append(bytes(data).decode())
        return len(data)

# stderr as an unbuffered one is (PYTHONUNBUFFERED): each write is a system call
writes = Writes()
sys.stderr = io.TextIOWrapper(writes, "utf-8", line_buffering=True, write_through=True)

import structlog
from bamboo_session.server.logs import announce, configure_logging

configure_logging(sys.argv[1], "info")

def fail():
    raise RuntimeError("boom")

structlog.get_logger("test").info("one line")
try:
    fail()
except RuntimeError:
    structlog.get_logger("test").exception("a traceback")
try:
    fail()
except RuntimeError:
    logging.getLogger("websockets").error("the standard library's", exc_info=True)
warnings.warn("a warning")
announce("listening")
json.dump(writes.writes, sys.stdout)
"""


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_every_kind_of_record_is_one_write(log_format: str) -> None:
    """structlog's records, a traceback of many lines, the standard library's records,
    warnings and announce(): each reaches stderr in one write, its newline last."""
    writes = json.loads(run_child(_EVERY_KIND, log_format).stdout)
    events = ["one line", "a traceback", "the standard library's", "a warning", "listening"]
    assert len(writes) == len(events), writes
    for write, event in zip(writes, events, strict=True):
        assert event in write and write.endswith("\n"), write
    assert "RuntimeError" in writes[1] and "RuntimeError" in writes[2]
