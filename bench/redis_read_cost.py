"""What the Redis store's ``read.lua`` costs inside Redis, and what a page's read brings
back to the server: this tree's against another tree's, interleaved in one
redis-server (h426: the script takes the page's byte budget and reads the log in
growing steps, stopping past it, where it read the whole count asked for).

As bench/redis_script_cost.py (whose machinery this uses): a redis-server of its own,
one store opened by the tree this process imports, each call's time in Redis from its
slow log, the median and the mean of the fastest 90 % per tree, and their ratio. Cases:
an ``events`` request's page (10,000 events asked for, 1 MiB at most) and a replay's
(512 events, 256 KiB), each over a log of small events (60 bytes: the page is the whole
count, the script's worst case) and of large ones (100 KB: the page is about the budget).
Per case, the events the read brought back to the server, by tree.

Run: ``PYTHONPATH=<shim> python -m bench.redis_read_cost --against
<other tree>/persistence/redis [--calls 300] [--rounds 3]``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis import scripts
from bamboo_session.protocol.models import AgentEvent, Session

from .redis_script_cost import Call, one_run, run_against

# (case, event bytes, events in the log, count asked for, byte budget)
CASES = (
    ("events page, small events", 60, 20_000, 10_000, 1 << 20),
    ("replay page, small events", 60, 20_000, 512, 256 << 10),
    ("events page, 100 KB events", 100_000, 120, 10_000, 1 << 20),
    ("replay page, 100 KB events", 100_000, 120, 512, 256 << 10),
)


def read_script_of(folder: Path) -> dict[str, scripts.Script]:
    common = (folder / "common.lua").read_bytes()
    return {"read": scripts.Script("read", common + (folder / "read.lua").read_bytes())}


async def filled(storage: Any, session_id: str, size: int, count: int) -> None:
    await storage.create_session(Session.new(session_id))
    for start in range(0, count, 500):
        items = [(AgentEvent.token("x" * size), None) for _ in range(min(500, count - start))]
        await storage.append_events(session_id, items)


def read_call(storage: Any, session_id: str, limit: int, budget: int, brought: list[int]) -> Call:
    """A page's read as the server makes it (persistence/redis/reading.py), its
    script the one the tree in place has (one_run); what Redis returned is counted."""

    async def call(_: int) -> None:
        keys = [storage.layout.meta(session_id), storage.layout.log(session_id)]
        args = ["1", limit, "", storage.generation.key, budget]
        entries = await storage.redis.run("read", keys, args)
        brought.append(len(entries))

    return call


async def measure(port: int, against: dict[str, scripts.Script], calls: int, rounds: int) -> None:
    url = f"redis://127.0.0.1:{port}/0?prefix=readcost&accept_lossy=true"
    storage: Any = await open_storage(url, cleanup_interval=None)
    client = storage.redis.client
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 2 * calls + 1000)
    ours = {"read": scripts.SCRIPTS["read"]}
    try:
        for case, size, count, limit, budget in CASES:
            session_id = f"log-{size}-{count}"
            if await storage.get_metadata(session_id) is None:
                await filled(storage, session_id, size, count)
            for run in range(rounds):
                brought: dict[str, list[int]] = {"ours": [], "theirs": []}
                trees = [
                    (tree, read_call(storage, session_id, limit, budget, brought[label]))
                    for label, tree in (("ours", ours), ("theirs", against))
                ]
                (ours_median, ours_mean), (their_median, their_mean) = await one_run(
                    client, trees, "read", calls
                )
                print(
                    f"{case}, run {run + 1}: this tree median {ours_median:.0f} us, fastest "
                    f"90 % {ours_mean:.1f} us, {brought['ours'][0]} events brought; against "
                    f"{their_median:.0f} us, {their_mean:.1f} us, {brought['theirs'][0]} events; "
                    f"RATIO this/against {ours_mean / their_mean:.3f}",
                    flush=True,
                )
    finally:
        await storage.close()


def main() -> None:
    run_against(__doc__.split("\n\n")[0], read_script_of, measure, 300)


if __name__ == "__main__":
    main()
