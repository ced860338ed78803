"""The client examples run as scripts (as a reader would run them) and print what they
promise: a gap-free resumed stream, and an agent turn that a rerun does not duplicate."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forks import ForkedChild
from tests.support import run_server

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    """``python examples/NAME ARGS``: a process forked once the imports the examples
    share with the tests' other children are done (tests/forks.py), run as __main__."""
    child = ForkedChild([str(EXAMPLES / name), *args])
    out, err = child.communicate(timeout=60)
    stderr = err.decode()
    assert child.returncode == 0, stderr
    assert "Traceback" not in stderr
    return out.decode()


def test_gateway_integration_resumes_without_gap(tmp_path: Path) -> None:
    out = run_example("gateway_integration.py", str(tmp_path))
    assert "stream at ws://127.0.0.1:" in out and out.count("/api/v1/stream/chat-42") == 1
    assert "viewer dropped after seq 5" in out
    assert "viewer reconnected, resuming after seq 5" in out
    assert "viewer saw seq 1..16 with no gap: 'once upon a time" in out
    seqs = [int(line.split("seq=")[1].split()[0]) for line in out.splitlines() if "seq=" in line]
    assert seqs == list(range(1, 17))
    assert len(list((tmp_path / "events").glob("chat-42-*.jsonl"))) == 1


def test_agent_runtime_streams_a_tool_call_and_reruns_idempotently(tmp_path: Path) -> None:
    out = run_example("agent_runtime.py", str(tmp_path))
    assert "[tool_start get_weather" in out and "[tool_complete -> " in out
    assert "It will be sunny in Paris" in out and "[complete: " in out
    assert "ui saw seq 2..23; the agent stored 22 events" in out
    assert "rerun of the turn: 0 new events (log still ends at seq 23)" in out
    assert "  tool: " in out and "['get_weather']" in out


async def test_examples_against_a_running_server() -> None:
    async with run_server(store="memory://") as server:
        url = f"ws://127.0.0.1:{server.port}"
        for name in ("gateway_integration.py", "agent_runtime.py") * 2:  # reruns are fine
            out = await asyncio.to_thread(run_example, name, "--url", url)
            assert "no gap" in out or "0 new events" in out


def test_examples_rerun_on_the_same_data_dir(tmp_path: Path) -> None:
    """A reader who keeps the store (DATA_DIR) and runs an example again sees it work
    again: each run is a session of its own, the earlier one still stored."""
    for _ in range(2):
        out = run_example("gateway_integration.py", str(tmp_path / "gateway"))
        assert "viewer saw seq 1..16 with no gap" in out
        out = run_example("agent_runtime.py", str(tmp_path / "agent"))
        assert "rerun of the turn: 0 new events (log still ends at seq 23)" in out
    assert len(list((tmp_path / "gateway" / "events").glob("chat-42*.jsonl"))) == 2
    assert len(list((tmp_path / "agent" / "events").glob("agent-demo*.jsonl"))) == 2


@pytest.mark.parametrize(
    "name",
    [
        "basic_usage.py",
        "session_manager.py",
        "gateway_integration.py",
        "agent_runtime.py",
        "browser/echo_agent.py",
    ],
)
def test_every_example_answers_help(name: str, tmp_path: Path) -> None:
    """``--help`` prints the usage and the example's first paragraph whole, and runs
    nothing: no store made in the working directory (one was, named ``--help``)."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout
    description = result.stdout.split("\n\n")[1]
    assert description.rstrip().endswith("."), description
    assert list(tmp_path.iterdir()) == []
