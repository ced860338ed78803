"""A child process for tests/test_churn_crash.py (run as a script, not collected): the
rarer writes of a store, all at once, until the parent SIGKILLs it.

``python tests/churn_child.py crash URL SEED`` opens the store and runs four tasks, each
printing one ``ack …`` line per step acknowledged, flushed at once:

- a publisher appends keyed events to session ``live`` (``ack event live EPOCH SEQ TAG``);
- a cleaner makes sessions with a TTL of 1 s, lets them expire, and removes them with
  ``cleanup_expired_sessions`` (``ack cleaning`` before, ``ack cleaned ID`` after);
- a deleter creates session ``d``, appends to it, deletes it and creates it again under
  the same id (``ack creating d EPOCH``, ``ack created d EPOCH``, ``ack deleting d
  EPOCH``, ``ack deleted d EPOCH``, its appends as ``ack event d …``);
- a closer appends to a new session from one task while another closes it (``ack
  closed ID`` once the close returned; the appends stop at SessionClosed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.persistence.errors import SessionClosed, SessionExpired
from bamboo_session.protocol.models import AgentEvent, Session, SessionState


def say(line: str) -> None:
    sys.stdout.write(f"ack {line}\n")
    sys.stdout.flush()


async def append_keyed(storage: Storage, session_id: str, epoch: str, rng: random.Random) -> None:
    tag = f"{session_id[0]}{rng.getrandbits(48):x}"
    items = [(AgentEvent.token(tag), tag)]
    (appended,) = await storage.append_events(session_id, items, epoch=epoch)
    say(f"event {session_id} {epoch} {appended.seq} {tag}")


async def publish(storage: Storage, rng: random.Random) -> None:
    if await storage.get_metadata("live") is None:
        await storage.create_session(Session.new("live", user_id="u"))
    meta = await storage.get_metadata("live")
    assert meta is not None
    while True:
        await append_keyed(storage, "live", meta.epoch, rng)


async def clean(storage: Storage, rng: random.Random) -> None:
    while True:
        made = []
        for _ in range(rng.randint(5, 20)):
            session_id = f"x{rng.getrandbits(40):x}"
            await storage.create_session(Session.new(session_id, user_id="u", ttl=1))
            # Its second may pass before its append on a loaded machine: cleaned as well.
            with contextlib.suppress(SessionExpired):
                await storage.append_event(session_id, AgentEvent.token("x" * rng.randint(1, 300)))
            made.append(session_id)
        await asyncio.sleep(1.05)
        say("cleaning")
        await storage.cleanup_expired_sessions()
        for session_id in made:
            say(f"cleaned {session_id}")


async def delete_and_create(storage: Storage, rng: random.Random) -> None:
    meta = await storage.get_metadata("d")
    while True:
        if meta is None:
            session = Session.new("d", user_id="u")
            say(f"creating d {session.metadata.epoch}")
            await storage.create_session(session)
            meta = session.metadata
            say(f"created d {meta.epoch}")
        for _ in range(rng.randint(0, 4)):
            await append_keyed(storage, "d", meta.epoch, rng)
        say(f"deleting d {meta.epoch}")
        await storage.delete_session("d")
        say(f"deleted d {meta.epoch}")
        meta = None


async def append_until_closed(
    storage: Storage, session_id: str, epoch: str, rng: random.Random
) -> None:
    while True:
        try:
            await append_keyed(storage, session_id, epoch, rng)
        except SessionClosed:
            return


async def close_while_appending(storage: Storage, rng: random.Random) -> None:
    while True:
        session = Session.new(f"s{rng.getrandbits(40):x}", user_id="u")
        session_id, epoch = session.metadata.id, session.metadata.epoch
        await storage.create_session(session)

        appending = asyncio.ensure_future(append_until_closed(storage, session_id, epoch, rng))
        await asyncio.sleep(rng.random() * 0.05)
        await storage.update_session_state(session_id, SessionState.CLOSED)
        say(f"closed {session_id}")
        await appending


async def crash(url: str, seed: int) -> None:
    rng = random.Random(seed)
    storage = await open_storage(url)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(
        publish(storage, rng),
        clean(storage, rng),
        delete_and_create(storage, rng),
        close_while_appending(storage, rng),
    )


if __name__ == "__main__":
    asyncio.run(crash(sys.argv[2], int(sys.argv[3])))
