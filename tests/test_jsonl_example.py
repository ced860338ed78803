"""examples/basic_usage.py runs as a script and prints the session it stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "basic_usage.py"


def run_example(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_basic_usage_example(tmp_path: Path) -> None:
    out = run_example(str(tmp_path))
    assert "session session-001 (My Chat) of user-123" in out
    assert "  user: Hello!" in out
    assert "expires at " in out
    assert (tmp_path / "sessions" / "session-001.json").is_file()
    assert (tmp_path / "events" / "session-001.jsonl").is_file()


def test_basic_usage_example_data_dir_from_env(tmp_path: Path) -> None:
    out = run_example(env={"BAMBOO_DATA_DIR": str(tmp_path)})
    assert "user: Hello!" in out
    assert (tmp_path / "sessions" / "session-001.json").is_file()


def test_basic_usage_example_defaults_to_a_temp_dir() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BAMBOO_DATA_DIR"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "user: Hello!" in result.stdout


def test_basic_usage_example_runs_again_on_its_store(tmp_path: Path) -> None:
    """A second run on the same store (a directory, or a store's URL) finds the first
    run's session and adds to it, where it failed with SessionExists."""
    for args in ([str(tmp_path / "jsonl")], ["--store", f"sqlite:///{tmp_path}/bamboo.db"]):
        run_example(*args)
        out = run_example(*args)
        assert "session-001 is in this store from an earlier run: adding to it" in out
        assert out.count("  user: Hello!") == 2
