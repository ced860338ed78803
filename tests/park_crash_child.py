"""A child process for tests/test_park_crash.py (run as a script, not collected): rounds of
what a restart does to a store one process holds, killed (SIGKILL) by the parent at a
random instant or by itself at a chosen step.

``python tests/park_crash_child.py URL SEED POINT``: opens the store at URL (JSONL or
SQLite, ``durability=fsync``), makes its ``SESSIONS`` sessions at the first run, then
rounds for ever: some sessions made ``active`` or ``idle`` (as attaches do), an event
appended to some (``ack <session> <seq> <tag>`` once acknowledged), one closed
(``closed <session>`` once the close returned: on disk), then the store's park
(``park_attached``, a ``step`` line per step) and its close (``closing``; on JSONL the
chunked checkpoints of every session the park moved), and the store opened again.
POINT ``random`` leaves the kill to the parent; ``step-N`` kills after the park's
N-th step of the first round; ``checkpoint-N`` at the N-th checkpoint write of the
second round's store close, N-1 of them written (JSONL: ``checkpoint.update``, which
the close's thread jobs call for each file, the first write of each after the open).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.persistence.jsonl import checkpoint
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

SESSIONS = 150  # more than two of the JSONL close's chunks (checkpointer.CHUNK)
BATCH = 40


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def die(*_args: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm_checkpoint_kill(count: int) -> None:
    real, calls = checkpoint.update, [0]

    def update_then_die(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == count:
            die()
        return real(*args)

    checkpoint.update = update_then_die  # type: ignore[assignment]


async def one_round(
    storage: Storage, rng: random.Random, round_: int, kill_step: int, kill_write: int
) -> None:
    assert isinstance(storage, ParksAttached)
    ids = [f"p{number:03}" for number in range(SESSIONS)]
    for session_id in rng.sample(ids, SESSIONS // 2):
        meta = await storage.get_metadata(session_id)
        if meta is None or meta.state == SessionState.CLOSED:
            continue
        state = rng.choice([SessionState.ACTIVE, SessionState.IDLE])
        await storage.update_session_state(session_id, state)
        if rng.random() < 0.2:
            tag = f"r{round_}-{session_id}"
            appended = await storage.append_event(session_id, AgentEvent.token(tag))
            say(f"ack {session_id} {appended.seq} {tag}")
    for session_id in rng.sample(ids, SESSIONS):
        meta = await storage.get_metadata(session_id)
        if meta is not None and meta.state != SessionState.CLOSED:
            await storage.update_session_state(session_id, SessionState.CLOSED)
            say(f"closed {session_id}")
            break
    steps = 0
    async for _parked in storage.park_attached(storage.now(), BATCH):
        steps += 1
        say("step")
        if steps == kill_step:
            die()
    say("closing")
    if kill_write:
        arm_checkpoint_kill(kill_write)


async def main(url: str, seed: int, point: str) -> None:
    rng = random.Random(seed)
    kill_step = int(point.removeprefix("step-")) if point.startswith("step-") else 0
    kill_write = int(point.removeprefix("checkpoint-")) if point.startswith("checkpoint-") else 0
    round_ = 0
    while True:
        storage = await open_storage(url, default_ttl=86400, cleanup_interval=None)
        try:
            if await storage.get_metadata(f"p{SESSIONS - 1:03}") is None:
                for number in range(SESSIONS):
                    session_id = f"p{number:03}"
                    if await storage.get_metadata(session_id) is None:
                        await storage.create_session(Session.new(session_id, user_id="u"))
            say("round")
            first, second = round_ == 0, round_ == 1
            await one_round(storage, rng, round_, kill_step * first, kill_write * second)
        finally:
            await storage.close()
        round_ += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
