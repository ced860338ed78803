"""The build's one step beyond pyproject.toml: record which commit a build is made of.

``bamboo_session/BUILD_COMMIT`` gets ``git describe --always --dirty`` of the tree a
wheel is built or the package installed from (``pip install .``, ``pip install -e .``,
``python -m build``), or ``unknown`` when the tree is no git checkout (git missing or
refusing counts as none). An sdist carries the record of the tree it was made from, so
a wheel built from it says the same. bamboo_session/build_info.py reads the file: the
server never runs git itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
RECORD = Path("bamboo_session", "BUILD_COMMIT")


def tree_commit() -> str:
    """What git describes the tree as; an sdist's record; else ``unknown``."""
    if (ROOT / ".git").exists():  # a directory, or a worktree's file
        try:
            described = subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return described or "unknown"
    try:
        return (ROOT / RECORD).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


class BuildPyRecordingCommit(build_py):
    """build_py, then the record: into the build (a wheel), or into the tree itself for
    an editable install, whose package is the tree."""

    def run(self) -> None:
        super().run()
        target = ROOT / RECORD if self.editable_mode else Path(self.build_lib) / RECORD
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(tree_commit() + "\n")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / RECORD)]


class SdistRecordingCommit(sdist):
    """sdist, with the record of the tree it is made from."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / RECORD
        target.unlink(missing_ok=True)  # a link to the tree's own, should it be listed
        target.write_text(tree_commit() + "\n")


if __name__ == "__main__":  # as setuptools runs it; tests/test_build_info.py loads it
    setup(cmdclass={"build_py": BuildPyRecordingCommit, "sdist": SdistRecordingCommit})
