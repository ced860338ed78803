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
  sets it again. A ``SET`` Redis refuses (at its ``maxmemory`` with ``noeviction``, an
  ACL) is said in a warning, and the store opens as format 1 all the same, as the
  versions before the record opened it: the next writable open sets it.
- A newer format is refused (:class:`StoreTooNew`: ``serve`` exits 2) at the open,
  before any script runs; so is a key that holds no format number (another type, or a
  string that is not one in ASCII digits), naming it.

Checked at the open only: an instance that runs on while another version moves the
format does not see it, so a version that moves it must not write the new format
while instances of the old one may run (docs/upgrading.md says how).
"""

from __future__ import annotations

import logging
import re
from typing import Final

import redis.exceptions
from redis.asyncio import Redis

from ..base import StoreMisconfigured, StoreTooNew
from .layout import Layout
from .pool import described, read
from .scripts import unreachable

log = logging.getLogger(__name__)

FORMAT: Final = 1
# A format number as the store writes it: ASCII digits, few of them (str.isdigit also
# takes "²", which int() does not, and int() refuses more than 4300 digits).
_NUMBER: Final = re.compile(rb"[0-9]{1,9}")


async def check_format(client: Redis, layout: Layout, writable: bool) -> int:
    """The store's format; set as this code's where the store has none and
    ``writable``. Raises StoreTooNew for a newer format, StoreMisconfigured for a key
    that holds no format number, StorageError when Redis fails."""
    key = layout.format()
    try:
        found = await read(client, "GET", key)
        if found is None and writable:
            found = await _set_record(client, key)
    except redis.exceptions.NoPermissionError as exc:  # an ACL: the same at every open
        raise StoreMisconfigured(
            f"Redis refuses GET of {key} to the store's user ({described(exc)}): allow "
            "it (ACL +get, or +@read), as the store reads its format there"
        ) from None
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            raise StoreMisconfigured(_not_a_record(key, "a value of another type")) from None
        raise unreachable(exc) from exc
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    if found is None:
        return FORMAT
    raw = found if isinstance(found, bytes) else str(found).encode()
    if not _NUMBER.fullmatch(raw) or int(raw) < 1:
        held = raw[:40].decode(errors="replace")
        raise StoreMisconfigured(_not_a_record(key, repr(held)))
    if int(raw) > FORMAT:
        raise StoreTooNew(f"the Redis store {layout.prefix!r} ({key})", int(raw), FORMAT)
    return int(raw)


async def _set_record(client: Redis, key: str) -> bytes | None:
    """The record set where there is none (``NX``: instances opening together agree),
    and the key read again: another instance's, set first. A SET Redis refuses leaves
    the store without one, format 1 all the same: said, and opened."""
    try:
        await client.set(key, FORMAT, nx=True)
    except redis.exceptions.ResponseError as exc:  # OOM, NOPERM, MISCONF: not unreachable
        log.warning(
            "the store's format record %s could not be written (%s): the store is "
            "opened as format %d, as the versions before the record opened it, and the "
            "record is set at a later open",
            key,
            described(exc),
            FORMAT,
        )
    found: bytes | None = await read(client, "GET", key)
    return found


def _not_a_record(key: str, held: str) -> str:
    return (
        f"Redis key {key} is not a store format record (it holds {held}, where the store "
        f"keeps a number such as {FORMAT}): put back the one the store had, or, for a "
        "store only versions of format 1 wrote, delete it to have it set again"
    )
