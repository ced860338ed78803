"""The JavaScript client (server/web/client/) on Node, closed 1011 under publishes whose
outcome a Redis store cannot know (``wait_replicas=1``, its replica stopped): it
resumes, resends them with their keys, and each resolves once with the seq it was
stored under; its stream holds them once, as the resume's replay, with no
SequenceError (tests/js/redis_in_doubt.test.mjs). Real redis-servers, a real server,
Node's WebSocket."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.node_runs import run_node_tests
from tests.redis_server import RedisServer
from tests.support import run_server
from tests.test_js import HINT, JS_DIR, node_command
from tests.test_redis_append_in_doubt import WAIT_MS, replicated_store

NODE_TIMEOUT = 90


@pytest.mark.timeout(NODE_TIMEOUT + 30)
async def test_the_js_client_resumes_and_its_publishes_in_doubt_get_their_seqs(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    command = node_command()
    if command is None:
        pytest.skip(HINT)
    store, replica_pid = await replicated_store(start_redis, tmp_path)
    async with run_server(store=store) as server:
        env = {
            **os.environ,
            "BAMBOO_URL": f"ws://127.0.0.1:{server.port}",
            "BAMBOO_REPLICA_PID": str(replica_pid),
            "BAMBOO_WAIT_MS": str(WAIT_MS),
        }
        returncode, report = await run_node_tests(
            command,
            [JS_DIR / "redis_in_doubt.test.mjs"],
            cwd=JS_DIR.parent.parent,
            env=env,
            timeout=NODE_TIMEOUT,
        )
    assert returncode == 0, report
    assert "# pass 1" in report and "# fail 0" in report, report
