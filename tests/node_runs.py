"""Runs of ``node --test`` (tests/test_js.py, tests/test_js_protocol.py) that leave no
process behind, however the test process ends.

``node --test`` runs each file in a Node process of its own, and a protocol file starts
servers of its own: children of children, which ``PR_SET_PDEATHSIG`` on ``node
--test`` does not reach. Node ends its file processes on SIGTERM or SIGINT, but not
when it is killed itself, as the test process's death signal kills it: they were left
under pid 1, running. So the run has a process group of its own, and a watcher
(:func:`tests.parent_death.group_ending_with_this_process`) kills that group when the
test process ends, killed too; a run over its time, or a test cancelled
(SIGINT: KeyboardInterrupt), kills it here."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.parent_death import ending_with_this_process, group_ending_with_this_process


async def run_node_tests(
    command: Sequence[str],
    files: Sequence[Path],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
) -> tuple[int | None, str]:
    """``command --test`` on ``files``, all at once, with a TAP report: its exit code
    (negative: killed over its ``timeout`` seconds) and the report."""
    process = await asyncio.create_subprocess_exec(
        *command,
        "--test",
        "--test-reporter=tap",
        # All files at once (the default is one fewer than the cores: one, on two).
        f"--test-concurrency={len(files)}",
        *map(str, files),
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # a group of its own, with its file processes and servers
        preexec_fn=ending_with_this_process(),  # killed with this process, until the watcher runs
    )
    assert process.stdout is not None
    reading = asyncio.create_task(process.stdout.read())
    try:
        with group_ending_with_this_process(process.pid):
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                pass  # killed below; the report says how far it got
            finally:
                # Over its time, or the test cancelled. Before the wait reaps it: its
                # pid, the group's, is not yet another's.
                if process.returncode is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
    except BaseException:
        reading.cancel()
        raise
    return process.returncode, (await reading).decode(errors="replace")
