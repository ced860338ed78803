"""The outside check of the wire contract on Node: tests/js/protocol_*.test.mjs, a raw
RFC 6455 client (tests/js/wire.mjs, over node:net: no WebSocket library, no project
code) that checks the server against PROTOCOL.md's statements, frame by frame. The
servers every file may share (tests/js/shared_servers.json) run here, in this process,
one of each for all the files; a file starts its own with this interpreter (on
127.0.0.1, a free port, a fresh data directory each) where a test needs one to itself:
the crash test's, which it kills with SIGKILL mid-stream and starts again on its data.
It stops every one by pid. Without ``node`` it skips with one line."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.server.cli import build_parser, config_from_args
from bamboo_session.server.config import ServerConfig
from tests.node_runs import run_node_tests
from tests.support import run_server

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted((ROOT / "tests" / "js").glob("protocol_*.test.mjs"))
NODE_TIMEOUT = 120
CHECKS = 39
# The flags of the servers every file may share (outside.mjs reads the same file): one
# server of each runs here for all the files, instead of a Python process each in every
# file that names it (15 starts became 3).
SHARED_FLAGS: dict[str, list[str]] = json.loads(
    (ROOT / "tests" / "js" / "shared_servers.json").read_text()
)


def serve_overrides(flags: list[str]) -> dict[str, Any]:
    """The ``run_server`` overrides of ``serve`` with ``flags``: the settings they change,
    and the frame rate, which ``serve`` leaves on unless told and ``run_server`` turns off."""

    def config_of(given: list[str]) -> ServerConfig:
        return config_from_args(build_parser().parse_args(["serve", *given]))

    config, defaults = config_of(flags), config_of([])
    changed = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if getattr(config, field.name) != getattr(defaults, field.name)
    }
    return {"rate_limit": config.rate_limit, **changed}


# Past the node run's own bound, so that its process group is killed here: when
# pytest-timeout ended the test first (both 120 s, a loaded run), node and its servers
# were left running.
@pytest.mark.timeout(NODE_TIMEOUT + 30)
async def test_wire_contract_from_outside() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("install Node.js 18+ for the outside check of the wire contract")
    async with contextlib.AsyncExitStack() as stack:
        ports = {
            name: (await stack.enter_async_context(run_server(**serve_overrides(flags)))).port
            for name, flags in SHARED_FLAGS.items()
        }
        returncode, report = await run_node(node, ports)
    assert returncode is not None and returncode >= 0, (
        f"the outside check took over {NODE_TIMEOUT} s:\n{report}"
    )
    assert returncode == 0, report
    assert f"# pass {CHECKS}" in report and "# fail 0" in report, report


async def run_node(node: str, ports: dict[str, int]) -> tuple[int | None, str]:
    """The node run's exit code (negative: killed over its time) and its TAP report."""
    env = {
        **os.environ,
        "BAMBOO_PYTHON": sys.executable,
        "BAMBOO_OUTSIDE_PORTS": json.dumps(ports),
    }
    return await run_node_tests([node], TEST_FILES, cwd=ROOT, env=env, timeout=NODE_TIMEOUT)
