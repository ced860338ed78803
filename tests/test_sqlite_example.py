"""The seed's basic example (examples/basic_usage.py) on the SQLite backend, by URL: it
prints the session it stored, and the file holds it, as the sqlite3 shell shows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "basic_usage.py"


def test_basic_usage_example_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "bamboo.db"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--store", f"sqlite://{path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "session session-001 (My Chat) of user-123" in result.stdout
    assert "  user: Hello!" in result.stdout
    assert "expires at " in result.stdout
    db = sqlite3.connect(path)
    assert db.execute("SELECT id, user_id, title, ttl, message_count FROM sessions").fetchall() == [
        ("session-001", "user-123", "My Chat", 86400, 1)
    ]
    assert db.execute("SELECT json_extract(event, '$.message.content') FROM events").fetchall() == [
        ("Hello!",)
    ]
