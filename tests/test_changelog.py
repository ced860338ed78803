"""CHANGELOG.md stays one readable document: its title first, each entry once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parent.parent / "CHANGELOG.md"


def test_the_changelog_starts_with_its_title_and_holds_each_entry_once() -> None:
    text = CHANGELOG.read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert text.count("\n# ") == 0, "one top-level title"
    entries = Counter(line for line in text.splitlines() if line.startswith("- "))
    repeated = [line for line, count in entries.items() if count > 1]
    assert not repeated, repeated
