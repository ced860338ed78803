"""A child process for tests/test_jsonl_case_names.py (run as a script, not collected).

``python tests/case_names_child.py write DIR SEED``: creates the sessions whose ids
differ only in case (CASE_IDS) where missing, then appends tokens tagged with the
session's id to them at random forever, printing ``ack <session> <seq> <tag>`` once
each is acknowledged; the parent kills it.

``python tests/case_names_child.py migrate DIR K``: opens the store for writing (a
format-1 store is renamed to format 2 there) and SIGKILLs itself at its ``K+1``-th
rename of a session file, before it: K files renamed, the rest not. Prints ``opened``
if the open ends first.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import case_names
from bamboo_session.protocol.models import AgentEvent, Session

LONG = "x" * 127
CASE_IDS = (
    "Chat",
    "chat",
    "CHAT",
    "cHaT",
    "a" * 128,
    "A" * 128,
    "aB" * 64,
    "Ab" * 64,
    LONG + "Q",
    LONG + "q",
)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def write(base: str, seed: int) -> None:
    rng = random.Random(seed)
    config = JsonlStorageConfig(base, checkpoint_every=rng.choice([2, 256]))
    storage = await JsonlStorage.open(config)
    for session_id in CASE_IDS:
        if await storage.get_metadata(session_id) is None:
            await storage.create_session(Session.new(session_id, title=session_id))
    say("ready")
    n = 0
    while True:
        n += 1
        session_id = rng.choice(CASE_IDS)
        tag = f"{session_id}/{seed}-{n}"
        stored = await storage.append_event(session_id, AgentEvent.token(tag))
        say(f"ack {session_id} {stored.seq} {tag}")


async def migrate(base: str, renames: int) -> None:
    rename = os.rename
    done = 0

    def rename_then_die(source: object, target: object) -> None:
        nonlocal done
        if done == renames:
            os.kill(os.getpid(), signal.SIGKILL)
        rename(source, target)  # type: ignore[arg-type]
        done += 1

    case_names.os.rename = rename_then_die  # type: ignore[assignment]
    storage = await JsonlStorage.open(JsonlStorageConfig(base))
    await storage.close()
    say("opened")


if __name__ == "__main__":
    mode, directory, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(write(directory, number) if mode == "write" else migrate(directory, number))
