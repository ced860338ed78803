"""Which build of bamboo-session this is: its version and the commit it was built from.

- The version is the installed distribution's (``importlib.metadata``), as pip
  recorded it; ``__version__`` where the package runs uninstalled.
- The commit is ``git describe --always --dirty`` of the tree the package was built or
  installed from, recorded then (setup.py) in ``BUILD_COMMIT`` beside this module;
  ``unknown`` where the tree was no git checkout (and no sdist carried a record), or
  nothing recorded it. Never asked of git here: a start pays no fork for it. An
  editable install (``pip install -e .``, ``make``) records the commit it was
  installed at, which the tree may have moved past since: ``make`` installs again when
  pyproject.toml, setup.py or constraints.txt change, not at each commit (``make
  serve`` records the tree's commit again before it starts the server).

Each is read once, when first asked (``--version``, the ``listening`` line,
``bamboo_build_info`` on ``/metrics``): an offline tool's start pays nothing for them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from bamboo_session import __version__

DISTRIBUTION: Final = "bamboo-session"
COMMIT_FILE: Final = Path(__file__).with_name("BUILD_COMMIT")
UNKNOWN: Final = "unknown"


@functools.cache
def version() -> str:
    """The installed distribution's version."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


@functools.cache
def commit() -> str:
    """The commit the package was built from, as recorded then; ``unknown`` if none was."""
    try:
        recorded = COMMIT_FILE.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return UNKNOWN
    # One short line of what git describe prints; anything else is not a record.
    if not recorded or len(recorded) > 100 or not recorded.isprintable() or " " in recorded:
        return UNKNOWN
    return recorded


def described() -> str:
    """``0.1.0 (commit c83f1c9)``: what ``bamboo-session --version`` says after its name."""
    return f"{version()} (commit {commit()})"
