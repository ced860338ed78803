"""A child process for tests/test_replace_crash.py (run as a script, not collected).

``python tests/replace_child.py crash URL SEED``: over and over, appends a few events
to session ``r`` (each a token holding the session's epoch), marks it ``expired``, and
replaces it with a new session (``create_session(replace_expired=True)``), printing at
once ``ack event EPOCH SEQ`` per acknowledged append, ``ack replacing EPOCH`` before a
replacement and ``ack replaced EPOCH`` after it; the parent kills it.
"""

from __future__ import annotations

import asyncio
import random
import sys

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import AgentEvent, Session, SessionState


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def crash(url: str, seed: int) -> None:
    rng = random.Random(seed)
    storage = await open_storage(url)
    if await storage.get_metadata("r") is None:
        first = Session.new("r")
        say(f"ack replacing {first.metadata.epoch}")
        await storage.create_session(first)
        say(f"ack replaced {first.metadata.epoch}")
    while True:
        meta = await storage.get_metadata("r")
        assert meta is not None
        if not meta.is_expired():
            for _ in range(rng.randint(1, 5)):
                appended = await storage.append_event("r", AgentEvent.token(meta.epoch))
                say(f"ack event {meta.epoch} {appended.seq}")
            await storage.update_session_state("r", SessionState.EXPIRED)
        new = Session.new("r")
        say(f"ack replacing {new.metadata.epoch}")
        await storage.create_session(new, replace_expired=True)
        say(f"ack replaced {new.metadata.epoch}")


if __name__ == "__main__":
    asyncio.run(crash(sys.argv[2], int(sys.argv[3])))
