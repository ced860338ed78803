"""The tasks a store starts are the store's, whoever's call made them start: none
carries a connection's or a session's log fields. A task takes a copy of its
creator's context variables, structlog's bound fields among them, and a store started
some of its tasks in the middle of a caller's work: Redis's subscribing task (which
serves every session) at a viewer's attach, in its session's actor; the JSONL store's
load of a session's idempotency keys at the first keyed append after a restart, a lone
append stored in its sender's reader task (h432: SessionActor.append_now). Whatever
such a task logged, for as long as it ran, named that connection or session.

A real server on every backend, real WebSocket peers, restarted on the same store; the
tasks are seen through the event loop's task factory, the public hook for every task
made, and each store task's (``bamboo-…``) log fields read in the context it runs in.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

import pytest
import structlog

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")

Made = list[tuple[asyncio.Task[Any], contextvars.Context]]


def recording_tasks(loop: asyncio.AbstractEventLoop, made: Made) -> None:
    """Every task made from now on, with the context it runs in, appended to ``made``."""

    def factory(
        loop: asyncio.AbstractEventLoop,
        coroutine: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        context = contextvars.copy_context() if context is None else context
        task = asyncio.Task(coroutine, loop=loop, context=context)
        made.append((task, context))
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]


async def test_the_stores_tasks_log_with_no_connections_fields() -> None:
    made: Made = []
    loop = asyncio.get_running_loop()
    recording_tasks(loop, made)
    try:
        async with run_server() as server:
            async with attach(server, "s1", create=True) as (agent, _):
                frame = {"type": "event", "id": 1, "key": "k1", "event": token("a")}
                await agent.request(frame, "ack")
        async with run_server() as server:  # the same store, opened again
            async with (
                attach(server, "s1", create=True) as (viewer, _),
                attach(server, "s1") as (agent, _),
            ):
                frame = {"type": "event", "id": 2, "key": "k2", "event": token("b")}
                ack = await agent.request(frame, "ack")
                assert (await viewer.recv_type("event"))["seq"] == ack["seq"]
    finally:
        loop.set_task_factory(None)
    fields = {
        task.get_name(): context.run(structlog.contextvars.get_contextvars)
        for task, context in made
        if task.get_name().startswith("bamboo-")
    }
    assert fields, "no store task seen"
    assert {name: bound for name, bound in fields.items() if bound} == {}
