"""The JavaScript on Node: the client's tests (tests/js/client*.test.mjs, node:test)
against real servers (one without auth, one with auth and no leeway, so that tokens
expire on time, one whose sessions expire 3 s after their last activity, so that a
session can be replaced under its id, one whose close bound is 1 s, so that a test
outlives it soon, and one whose close bound is 30 s, so that a loaded machine moves a
replay of megabytes within it), a type check of the JSDoc of server/web/ (tsc),
and its format (prettier). The test files run side by side, each in a Node process of
its own: most of their time goes in waiting for tokens, sessions and close bounds to
run out, which they can do together. Node 22+ has a global WebSocket; Node 20.10+ gets
it from a flag. Without a Node that has one, or without the tools of
tests/js/package-lock.json (``npm ci --prefix tests/js``, which .ci/run does), each
skips with one line saying so."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.node_runs import run_node_tests
from tests.support import run_server

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"
TEST_FILES = sorted(JS_DIR.glob("client*.test.mjs"))
HINT = "install Node.js 22+ (or 20.10+) for the Node test of the JavaScript client"
# The Node tests sign their own tokens with it (HS256, node:crypto).
AUTH_SECRET = "js-test-secret-" + "s" * 32
# The files take some 50 s one after another on two idle cores, some 18 s side by side
# (the longest, client_replay_cut and client_tokens, some 15 s): room for a loaded machine.
NODE_TIMEOUT = 120
# The expiring server's session TTL (seconds): long enough for a replaced session to
# outlive a client's reconnect and read, short enough for a test to wait for expiry.
# 2 s was not long enough on a starved machine (a load of 30 on two cores), where the
# store work of a create in place of an expired session took 2 to 3.6 s, and the new
# session had expired by its welcome (client_pages.test.mjs tries such a create again).
EXPIRING_TTL = 3
# The quick server's --close-timeout (seconds): client_replay_cut waits past it.
QUICK_CLOSE_TIMEOUT = 1
# The slow server's --close-timeout: client_replay_cut reads a 12 MB replay within it
# after the close, through a proxy; a load of 27 on two cores took over the default 5 s.
SLOW_CLOSE_TIMEOUT = 30
# The store of the servers with a close bound of their own, which client_replay_cut
# fills with 12 MB twice: what it checks is the bound, not the disk, and an fsync a
# batch took a third of its time on a loaded machine.
NO_FSYNC = "os"


@functools.cache
def node_command() -> list[str] | None:
    """``node`` with whatever flag gives it a global WebSocket, or None."""
    node = shutil.which("node")
    if node is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = [node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return [node, *flags]
    return None


# Past the node run's own bound, so that the run is ended here, its report kept.
@pytest.mark.timeout(NODE_TIMEOUT + 30)
async def test_js_client_on_node() -> None:
    command = node_command()
    if command is None:
        pytest.skip(HINT)
    async with (
        run_server() as server,
        run_server(auth_secret=AUTH_SECRET, auth_leeway=0) as authed,
        run_server(default_ttl=EXPIRING_TTL) as expiring,
        run_server(close_timeout=QUICK_CLOSE_TIMEOUT, durability=NO_FSYNC) as quick_close,
        run_server(close_timeout=SLOW_CLOSE_TIMEOUT, durability=NO_FSYNC) as slow_close,
    ):
        env = {
            **os.environ,
            "BAMBOO_URL": f"ws://127.0.0.1:{server.port}",
            "BAMBOO_AUTH_URL": f"ws://127.0.0.1:{authed.port}",
            "BAMBOO_AUTH_SECRET": AUTH_SECRET,
            "BAMBOO_EXPIRING_URL": f"ws://127.0.0.1:{expiring.port}",
            "BAMBOO_QUICK_CLOSE_URL": f"ws://127.0.0.1:{quick_close.port}",
            "BAMBOO_QUICK_CLOSE_TIMEOUT": str(QUICK_CLOSE_TIMEOUT),
            "BAMBOO_SLOW_CLOSE_URL": f"ws://127.0.0.1:{slow_close.port}",
        }
        returncode, report = await run_node_tests(
            command, TEST_FILES, cwd=ROOT, env=env, timeout=NODE_TIMEOUT
        )
    assert returncode is not None and returncode >= 0, (
        f"the Node tests took over {NODE_TIMEOUT} s:\n{report}"
    )
    assert returncode == 0, report
    assert "# pass 62" in report and "# fail 0" in report, report


def js_tool(name: str) -> Path:
    tool = JS_DIR / "node_modules" / ".bin" / name
    if not tool.exists():
        pytest.skip(f"{name} for the JavaScript checks: npm ci --prefix tests/js")
    return tool


def test_jsdoc_types_check() -> None:
    """The JSDoc of the client and the console type-checks under ``tsc --strict``, so
    editors complete what it says."""
    tsc = js_tool("tsc")
    result = subprocess.run([tsc, "-p", JS_DIR], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_javascript_is_formatted() -> None:
    """``prettier --check``, as ``ruff format --check`` for the Python."""
    prettier = js_tool("prettier")
    sources = [*(ROOT / "server" / "web").rglob("*"), *(ROOT / "examples" / "browser").iterdir()]
    files = [f for f in sorted(sources) if f.suffix in (".js", ".css", ".html")]
    assert len(files) >= 12
    command = [prettier, "--config", JS_DIR / ".prettierrc.json", "--check", *files]
    tests = sorted(JS_DIR.glob("*.mjs"))  # the client's tests, and the outside check's files
    result = subprocess.run([*command, *tests], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
