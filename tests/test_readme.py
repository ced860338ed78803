"""README.md as a reader uses it: every ```python block runs as written, and every link
stays inside the repository.

Each block runs alone, as a script of its own, with the project's virtualenv Python, in
a fresh temporary directory, with a timeout. A real server is listening for the blocks
that talk to one, at ``$BAMBOO_URL`` (the variable the README's tools read), and
``$BAMBOO_AUTH_SECRET`` is set as the README's auth section exports it. ``$HOME`` points
into the temporary directory, so a block that wrote into a default data directory
(``~/.bamboo``) would be caught rather than touch the developer's.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import run_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SNIPPET_TIMEOUT = 60.0

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each ```python block of ``text``: the line its code starts on, and the code."""
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in _PYTHON_BLOCK.finditer(text)
    ]


README_BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def run_snippet(code: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = workdir / "snippet.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [PYTHON, str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
    )


def test_every_python_fence_is_found() -> None:
    # The extraction must not skip a block (and so let it rot): count the fences.
    text = README.read_text(encoding="utf-8")
    assert len(README_BLOCKS) == text.count("```python")
    assert len(README_BLOCKS) >= 4


@pytest.mark.parametrize(
    ("line", "code"), README_BLOCKS, ids=[f"README.md:{line}" for line, _ in README_BLOCKS]
)
async def test_readme_python_block_runs(line: int, code: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    workdir = tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    async with run_server(tmp_path / "server-data", durability="os") as server:
        env = dict(os.environ)
        env.update(
            HOME=str(home),
            BAMBOO_URL=f"ws://127.0.0.1:{server.port}",
            BAMBOO_AUTH_SECRET=secrets.token_urlsafe(48),
        )
        result = await asyncio.to_thread(run_snippet, code, workdir, env)
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert not (home / ".bamboo").exists(), "the snippet wrote into the default data directory"


@pytest.mark.parametrize("document", ["README.md", "docs/protocol.md"])
def test_links_stay_inside_the_repository(document: str) -> None:
    """A clone has only the repository: a link must not lead out of it."""
    path = ROOT / document
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor of the same page
        resolved = (path.parent / target.partition("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{document} links outside the repo: {target}"
