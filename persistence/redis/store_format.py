"""The Redis store's format number: ``<prefix>:{idx}:format``, a string holding ``N``,
so that an instance refuses a store written in a format newer than it reads instead of
reading it as something it is not (docs/upgrading.md).

- ``FORMAT`` is this code's format. It moves when a version writes what an earlier
  one would misread or drop; a version reads every format up to its own.
- A store without the key was made by a version before the record, which wrote
  format 1 (or has no session yet): a writable open sets the key (``SET NX``, so
  instances opening together agree) before the store is used; a read-only open (a
  replica, ``ls``, migrate's source) reads the store as format 1 and writes nothing.
  A Redis that loses writes may lose the key with the rest: the next writable open
  sets it again.
- A newer format is refused (:class:`StoreTooNew`: ``serve`` exits 2) at the open,
  before any script runs; so is a key that holds no format number.

Checked at the open only: an instance that runs on while another version moves the
format does not see it, so a version that moves it must not write the new format
while instances of the old one may run (docs/upgrading.md says how).
"""

from __future__ import annotations

from typing import Final

import redis.exceptions
from redis.asyncio import Redis

from ..base import StoreMisconfigured, StoreTooNew
from .layout import Layout
from .pool import read
from .scripts import unreachable

FORMAT: Final = 1


async def check_format(client: Redis, layout: Layout, writable: bool) -> int:
    """The store's format; set as this code's where the store has none and
    ``writable``. Raises StoreTooNew for a newer format, StoreMisconfigured for a key
    that holds no format number, StorageError when Redis fails."""
    key = layout.format()
    try:
        found = await read(client, "GET", key)
        if found is None and writable:
            await client.set(key, FORMAT, nx=True)
            found = await read(client, "GET", key)  # another instance's, set first
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    if found is None:
        return FORMAT
    text = found.decode(errors="replace") if isinstance(found, bytes) else str(found)
    if not text.isdigit() or int(text) < 1:
        raise StoreMisconfigured(
            f"Redis key {key} is not a store format record (it holds {text[:40]!r}, where "
            f"the store keeps a number such as {FORMAT}): put back the one the store had, "
            "or, for a store only versions of format 1 wrote, delete it to have it set again"
        )
    if int(text) > FORMAT:
        raise StoreTooNew(f"the Redis store {layout.prefix!r} ({key})", int(text), FORMAT)
    return int(text)
