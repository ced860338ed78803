"""Logging: JSON lines, and tracebacks that never carry local variables (a request's
locals hold its headers, bearer tokens among them)."""

from __future__ import annotations

import json
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


def logged_by_child(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, log_format],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


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
