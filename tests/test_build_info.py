"""Which build an instance runs, and on which store format: ``bamboo-session --version``,
the ``listening`` line and ``bamboo_build_info`` on ``/metrics`` say the version (the
installed distribution's), the commit recorded at build or install time (setup.py:
``git describe --always --dirty``, else ``unknown``) and the store's format (r351:
every build said ``0.1.0``, and nothing said which)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import bamboo_session
from bamboo_session import build_info
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import get, run_server

__all__ = ["pytest_generate_tests", "server_store"]

ROOT = Path(__file__).resolve().parent.parent
FORMATS = {"memory": "none", "jsonl": "jsonl/2", "sqlite": "sqlite/3", "redis": "redis/1"}


def recorded_commit() -> str:
    """What the package this test imports recorded, as an operator would read it."""
    record = Path(bamboo_session.__file__).with_name("BUILD_COMMIT")
    return record.read_text().strip() if record.is_file() else "unknown"


def test_version_says_the_installed_version_and_the_commit_built_from() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected = f"bamboo-session {metadata.version('bamboo-session')} (commit {recorded_commit()})"
    assert done.stdout.strip() == expected


async def test_the_listening_line_and_metrics_say_the_build_and_the_store_format(
    server_store: str, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["server_store"]
    build = {
        "version": metadata.version("bamboo-session"),
        "commit": recorded_commit(),
        "store_format": FORMATS[backend],
    }
    with capture_logs() as logs:
        async with run_server() as server:
            (listening,) = [e for e in logs if e["event"].startswith("listening on")]
            assert {name: listening[name] for name in build} == build
            status, text = await get(server, "/metrics")
    assert status == 200
    (line,) = [line for line in text.splitlines() if line.startswith("bamboo_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert labels == build and line.endswith(" 1.0")


@pytest.mark.parametrize(
    ("recorded", "read"),
    [
        ("c83f1c9\n", "c83f1c9"),
        ("v0.1.0-12-gc83f1c9-dirty\n", "v0.1.0-12-gc83f1c9-dirty"),
        ("", "unknown"),
        ("fatal: not a git repository\n", "unknown"),
        ("x" * 101, "unknown"),
        (None, "unknown"),
    ],
)
def test_a_record_is_read_as_one_word_or_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: str | None, read: str
) -> None:
    record = tmp_path / "BUILD_COMMIT"
    if recorded is not None:
        record.write_text(recorded)
    monkeypatch.setattr(build_info, "COMMIT_FILE", record)
    assert build_info.commit.__wrapped__() == read


def tree_commit(tree: Path) -> str:
    """setup.py's record of ``tree``, as a build from it would write it."""
    shutil.copy(ROOT / "setup.py", tree / "setup.py")
    program = "import runpy; print(runpy.run_path('setup.py', run_name='probe')['tree_commit']())"
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=tree, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def git(tree: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    done = subprocess.run(
        ["git", *identity, *args], cwd=tree, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git: apt-get install -y git")
def test_a_build_records_what_git_describes_the_tree_as_else_unknown(tmp_path: Path) -> None:
    """A checkout: its commit, ``-dirty`` once a tracked file changed. No checkout: an
    sdist's record if it carries one, else ``unknown``."""
    checkout = tmp_path / "checkout"
    (checkout / "bamboo_session").mkdir(parents=True)
    (checkout / "bamboo_session" / "__init__.py").write_text("")
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "first")
    head = git(checkout, "rev-parse", "--short", "HEAD")
    assert tree_commit(checkout) == head  # setup.py itself is untracked: not dirty
    (checkout / "bamboo_session" / "__init__.py").write_text("changed = True\n")
    assert tree_commit(checkout) == f"{head}-dirty"

    unpacked = tmp_path / "unpacked"
    (unpacked / "bamboo_session").mkdir(parents=True)
    assert tree_commit(unpacked) == "unknown"
    (unpacked / "bamboo_session" / "BUILD_COMMIT").write_text(f"{head}\n")  # an sdist's
    assert tree_commit(unpacked) == head


@pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None,
    reason="needs git and make: apt-get install -y git make",
)
def test_make_serve_records_the_commit_the_tree_is_at_before_it_starts(tmp_path: Path) -> None:
    """An editable install records its commit once; ``make serve`` after a pull ran the
    new code under the old commit's name (the listening line and /metrics said 88d07d7f
    of a tree six dozen commits on). The server here is a stand-in that says it ran."""
    checkout = tmp_path / "checkout"
    (checkout / "bamboo_session").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / ".gitignore").write_text("bamboo_session/BUILD_COMMIT\n")
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "installed at")
    record = checkout / "bamboo_session" / "BUILD_COMMIT"
    record.write_text(git(checkout, "rev-parse", "--short", "HEAD") + "\n")
    git(checkout, "commit", "-q", "--allow-empty", "-m", "pulled since")
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "bamboo-session").write_text('#!/bin/sh\necho "ran $1"\n')
    (stand_in / "bamboo-session").chmod(0o755)

    def make_serve() -> None:
        done = subprocess.run(
            ["make", "-s", "-o", ".venv/.installed", "serve", f"BIN={stand_in}"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout) == (0, "ran serve\n"), done.stderr

    make_serve()
    assert record.read_text().strip() == git(checkout, "describe", "--always", "--dirty")
    (checkout / "Makefile").write_text((checkout / "Makefile").read_text() + "\n")
    make_serve()
    assert record.read_text().strip().endswith("-dirty")

    (checkout / ".git").rename(checkout / "git-moved")
    (checkout / ".git").write_text("")  # a checkout git cannot read: not the old record
    make_serve()
    assert record.read_text().strip() == "unknown"

    record.write_text("abc1234\n")
    (checkout / ".git").unlink()  # an unpacked tree: its record (an sdist's) stays
    make_serve()
    assert record.read_text().strip() == "abc1234"
