"""What a ``serve`` start imports: what its store, its log format and its auth use, and
nothing else. Imports are most of a start's CPU, which every restart, every test that starts a
server and every worker of ``serve --workers`` pays: a backend, PyJWT or rich that
comes back unasked shows here, not only as a slower start.

Each test runs a real ``serve`` through a wrapper that, asked on stdin once the server
listens, prints the names of the modules loaded (a ``None`` in ``sys.modules``, a
module kept out, is not one)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LOADED_ONCE_LISTENING = """
import json, sys, threading
from bamboo_session.server.cli import main

def tell_loaded():
    sys.stdin.readline()
    loaded = sorted(name for name, module in list(sys.modules.items()) if module is not None)
    print(json.dumps(loaded), flush=True)

threading.Thread(target=tell_loaded, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""

# Each store's modules: its backend, then its driver.
BACKENDS = {
    "jsonl": ("bamboo_session.persistence.jsonl",),
    "sqlite": ("bamboo_session.persistence.sqlite", "sqlite3"),
    "redis": ("bamboo_session.persistence.redis", "redis", "hiredis"),
}
# What a server without auth or --config logging JSON never needs: PyJWT, rich
# (structlog's console tracebacks, and pygments with it), the TOML parser, the client.
UNASKED = ("jwt", "rich", "pygments", "tomllib", "bamboo_session.protocol.client")


def loaded_by_serve(*flags: str) -> set[str]:
    """The modules a ``serve`` with ``flags`` (and no BAMBOO_* variable) has loaded once
    it listens."""
    process = subprocess.Popen(
        [sys.executable, "-c", LOADED_ONCE_LISTENING, "serve", "--port", "0", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if not name.startswith("BAMBOO_")},
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    try:
        said = b""
        while b"listening on" not in said:
            line = process.stderr.readline()
            assert line, f"serve exited before listening: {said.decode()}"
            said += line
        process.stdin.write(b"\n")
        process.stdin.flush()
        loaded = set(json.loads(process.stdout.readline()))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        return loaded
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            pipe.close()


def among(loaded: set[str], packages: tuple[str, ...] | list[str]) -> list[str]:
    """The modules of ``loaded`` that are one of ``packages`` or inside one."""
    return sorted(
        name for name in loaded for p in packages if name == p or name.startswith(p + ".")
    )


@pytest.mark.parametrize(
    ("store", "log_format", "backend"),
    [
        (["--store", "memory://"], "json", None),
        # The default store; auto logs JSON, stderr being a pipe.
        ([], "auto", "jsonl"),
        (["--store", "sqlite:///{tmp}/s.db"], "json", "sqlite"),
    ],
)
def test_serve_logging_json_imports_only_its_store(
    tmp_path: Path, store: list[str], log_format: str, backend: str | None
) -> None:
    flags = [flag.format(tmp=tmp_path) for flag in store]
    loaded = loaded_by_serve(*flags, "--data-dir", str(tmp_path), "--log-format", log_format)
    assert {"structlog", "websockets", "bamboo_session.server.app"} <= loaded  # it served
    others = [module for name, modules in BACKENDS.items() if name != backend for module in modules]
    assert among(loaded, [*others, *UNASKED]) == []
    if backend is not None:
        assert BACKENDS[backend][0] in loaded


@pytest.mark.skipif(importlib.util.find_spec("rich") is None, reason="rich is not installed")
def test_serve_logging_to_the_console_keeps_rich_for_its_tracebacks(tmp_path: Path) -> None:
    loaded = loaded_by_serve("--store", "memory://", "--log-format", "console")
    assert "rich.traceback" in loaded
    assert among(loaded, ["redis", "sqlite3", "jwt"]) == []


def test_serve_with_auth_loads_pyjwt_at_start_not_at_its_first_token() -> None:
    # Loaded before it listens: the import would otherwise stop the event loop at the
    # first token, with connections waiting, and a broken install fail each of them.
    loaded = loaded_by_serve(
        "--store", "memory://", "--log-format", "json", "--auth-secret", "s" * 32
    )
    assert "jwt" in loaded
    assert among(loaded, ["rich", "redis", "sqlite3", "tomllib"]) == []
