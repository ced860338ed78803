"""Logging: JSON lines, and tracebacks that never carry local variables (a request's
locals hold its headers, bearer tokens among them)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.server_process import ROOT

_CHILD = """
import structlog
from bamboo_session.server.logs import configure_logging

configure_logging("json", "info")

def handle(authorization):
    raise RuntimeError("boom")

try:
    handle("Bearer eyJsecret.token.value")
except RuntimeError:
    structlog.get_logger("test").exception("request failed")
"""


def test_a_logged_traceback_has_no_locals() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "request failed" and record["level"] == "error"
    assert "RuntimeError" in json.dumps(record["exception"])  # the traceback is there
    assert "eyJsecret" not in line  # its frames' locals are not
