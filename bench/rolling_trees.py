"""The rolling-upgrade bench's (bench/rolling_upgrade.py) source trees and servers: a
tree is a checkout of the project at some commit, run with the shared virtualenv
through a ``sitecustomize`` shim that makes ``bamboo_session.*`` import from it (in
every child process too); a server is ``python -m bamboo_session.server serve`` of one
tree on a store that outlives it, started, stopped with SIGTERM or SIGKILL by its pid,
and started again, maybe of another tree.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_LISTENING = re.compile(rb"listening on ([0-9.]+):(\d+)")
_PROBLEM = re.compile(r'"level": ?"(error|critical)"')
# The project's own packages: the shim finds these in the tree, everything else (the
# dependencies) comes from the virtualenv as usual.
_SHIM = '''"""Imports bamboo_session.* from {root} (the rolling-upgrade bench's shim)."""
import sys
from importlib.machinery import PathFinder

_ROOT = {root!r}
_TOP = {{"bamboo_session", "bamboo_session.persistence", "bamboo_session.protocol",
        "bamboo_session.server"}}


class _TreeFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in _TOP:
            return PathFinder.find_spec(fullname, path=[_ROOT])
        return None

    @classmethod
    def invalidate_caches(cls):
        pass


sys.meta_path.insert(0, _TreeFinder)
'''


@dataclass(frozen=True)
class Tree:
    """One version of the project: its checkout, and the shim that runs it."""

    name: str  # "old" or "new", as the report says
    root: Path
    shim: Path

    @classmethod
    def prepare(cls, name: str, root: Path, work: Path) -> Tree:
        shim = work / f"{name}.shim"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "sitecustomize.py").write_text(_SHIM.format(root=str(root.resolve())))
        return cls(name, root.resolve(), shim)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.shim)
        env.pop("BAMBOO_CONFIG", None)
        return env

    def commit(self) -> str:
        """The tree's commit and its date, and whether files differ from it."""

        def git(*args: str) -> str:
            done = subprocess.run(
                ["git", "-C", str(self.root), *args], capture_output=True, text=True, check=False
            )
            return done.stdout.strip()

        commit = git("log", "-1", "--format=%h %cd", "--date=iso") or "unknown"
        changed = git("status", "--porcelain", "--untracked-files=no")
        return f"{commit} (+ uncommitted changes)" if changed else commit

    def imports_from(self) -> str:
        """Where ``bamboo_session.server`` is imported from under this tree's shim."""
        done = subprocess.run(
            [sys.executable, "-c", "import bamboo_session.server as m; print(m.__file__)"],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.shim,
            check=True,
        )
        return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class StartRefused(RuntimeError):
    """The server exited before it listened: its status and its last log lines."""

    def __init__(self, status: int, tail: str) -> None:
        super().__init__(f"exited {status}: {tail}")
        self.status = status
        self.tail = tail


class TreeServer:
    """A server of one tree on ``store``; its log appended to ``log_path`` across starts."""

    def __init__(
        self, tree: Tree, store: str, log_path: Path, extra: tuple[str, ...] = (), port: int = 0
    ) -> None:
        self.tree = tree
        self.store = store
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port  # 0: a free one, read from the log once started
        self.fixed_port = port
        self._log_start = 0

    @property
    def label(self) -> str:
        return f"{self.tree.name}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bamboo_session.server",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.fixed_port),
            "--store",
            self.store,
            "--log-format",
            "json",
            "--rate-limit",
            "0",
            "--session-create-rate",
            "0",
            *self.extra,
        ]

    def start(self) -> TreeServer:
        """Started and listening; :class:`StartRefused` if it exits first."""
        with self.log_path.open("ab") as log:
            log.write(f"--- start of {self.tree.name} ({self.tree.root})\n".encode())
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.tree.shim,  # not a tree's root: nothing imported from the cwd
                env=self.tree.env(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_text().encode())
            if match:
                self.port = int(match.group(2))
                return self
            status = self.proc.poll()
            if status is not None:
                raise StartRefused(status, self.log_tail())
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.tree.name} server did not start in {START_TIMEOUT} s")

    def log_text(self) -> str:
        """What this start logged so far."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 4) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def problems(self) -> list[str]:
        """Lines of this start's log at level error or above, and tracebacks."""
        found = []
        for line in self.log_text().splitlines():
            if _PROBLEM.search(line) or "Traceback" in line:
                found.append(line[:400])
        return found

    def stop(self) -> int | None:
        """SIGTERM by its pid, then its exit status (SIGKILL past the timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL by its pid: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)

    def ws(self, session_id: str) -> str:
        return f"ws://{HOST}:{self.port}/api/v1/stream/{session_id}"

    def http(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"
