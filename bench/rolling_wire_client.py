"""The rolling-upgrade bench's client child (bench/rolling_wire.py): one tree's Python
client (``BambooClient``) against a server of maybe another version. Run by path under
a tree's shim, so ``bamboo_session`` is that tree's; it uses only calls every version
of the client has.

- ``publisher``: publishes ``--events`` token events, 25 at a time (so they queue and
  go as ``batch`` frames where the server offers the extension), prints ``HALF`` on
  stdout half way (the bench then restarts the server: the client resumes and resends
  what was unanswered), then reads the log back page by page and checks each key is
  stored once at the seq its publish returned (past half way it publishes slower, and
  its last group only once it reconnected: the restart lands mid-stream);
- ``viewer``: prints ``ATTACHED`` once connected, then follows the session from seq 0
  with ``events()`` until it saw
  ``--events`` events; the client raises on a gap or a duplicate, and yields a
  ``Reset`` where a resume was refused.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient, Reset

GROUP = 25


async def publisher(url: str, session_id: str, count: int) -> dict[str, Any]:
    client = await BambooClient.connect(
        url, session_id, create=True, role="agent", receive_events=False, backoff_max=0.5
    )
    result: dict[str, Any] = {"role": "publisher", "problems": []}
    # What the first welcome offered, as the client read it (0: no batches).
    result["max_batch_items"] = client._state.max_batch_items
    seqs: dict[str, int] = {}
    try:
        for start in range(0, count, GROUP):
            if start >= count // 2 and "half" not in result:
                result["half"] = len(seqs)
                print("HALF", flush=True)
            if "half" in result:
                # Slower past half way, and the last group only once the restart came:
                # the stop lands while publishes are in flight.
                await asyncio.sleep(0.02)
                if start + GROUP >= count:
                    await _reconnected(client)
            keys = [f"w-{i}" for i in range(start, min(count, start + GROUP))]
            done = await asyncio.wait_for(
                asyncio.gather(*(client.publish(AgentEvent.token(k), key=k) for k in keys)), 60
            )
            seqs.update(zip(keys, done, strict=True))
        stored: dict[int, str] = {}
        after = 0
        while True:
            page = await client.read_events(after, 500)
            for event in page.events:
                stored[event.seq] = event.event.content  # type: ignore[union-attr]
            if len(page.events) < 500:
                break
            after = page.events[-1].seq
        wrong = [k for k, s in seqs.items() if stored.get(s) != k]
        if wrong:
            result["problems"].append(f"{len(wrong)} publishes not at their seq: {wrong[:3]}")
        if len(set(stored.values())) != len(stored):
            result["problems"].append("a key stored twice")
        result.update(
            published=len(seqs),
            stored=len(stored),
            reconnects=client.reconnects,
            resent=client.resent,
            max_batch_items_after=client._state.max_batch_items,
        )
    finally:
        await client.close()
    return result


async def _reconnected(client: BambooClient, wait: float = 30.0) -> None:
    deadline = time.monotonic() + wait
    while client.reconnects < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 - a count
        await asyncio.sleep(0.01)


async def viewer(url: str, session_id: str, count: int) -> dict[str, Any]:
    client = await BambooClient.connect(url, session_id, create=True, last_seq=0, backoff_max=0.5)
    print("ATTACHED", flush=True)
    result: dict[str, Any] = {"role": "viewer", "problems": [], "resets": 0}
    seen = 0
    deadline = time.monotonic() + 120
    try:
        async for item in client.events():
            if isinstance(item, Reset):
                result["resets"] += 1
                result["problems"].append("a resume was refused (Reset)")
                continue
            seen += 1
            if item.seq >= count or time.monotonic() > deadline:
                break
        result.update(seen=seen, last_seq=client.last_seq, reconnects=client.reconnects)
    except Exception as exc:  # a SequenceError, or the session ended: the finding
        result["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        await client.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("publisher", "viewer"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    run = publisher if args.role == "publisher" else viewer
    try:
        result = asyncio.run(run(args.url, args.session, args.events))
    except Exception as exc:
        result = {"role": args.role, "problems": [f"{type(exc).__name__}: {exc}"]}
    import bamboo_session

    result["client_from"] = bamboo_session.__file__
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
