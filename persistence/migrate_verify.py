"""Verifying a copy ``bamboo-session migrate`` made (``--verify``): every session of
both stores compared, counts, last seq, epoch, state and final metadata, and a checksum
of the events (seq, ts, key and the event, re-encoded so that two backends'
byte-for-byte spellings of one event agree).
"""

from __future__ import annotations

import dataclasses
import hashlib

from bamboo_session.protocol.models import SessionMetadata

from .base import Storage
from .migrate import PAGE_BYTES, PAGE_EVENTS, final_fields, fingerprint, plain, source_sessions


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    session_id: str
    what: str


async def verify(source: Storage, target: Storage) -> tuple[int, list[Difference]]:
    """Compare every session of both stores; how many were compared, and what differs."""
    differences: list[Difference] = []
    seen: set[str] = set()
    async for meta in source_sessions(source):
        seen.add(meta.id)
        found = await target.get_metadata(meta.id)
        if found is None:
            differences.append(Difference(meta.id, "missing from the destination"))
            continue
        differences.extend(Difference(meta.id, what) for what in _compare(meta, found))
        if found.epoch == meta.epoch and found.last_seq == meta.last_seq:
            mine, theirs = await _checksum(source, meta.id), await _checksum(target, meta.id)
            if mine != theirs:
                differences.append(Difference(meta.id, f"event checksum {mine} != {theirs}"))
    async for meta in source_sessions(target):
        if meta.id not in seen:
            differences.append(Difference(meta.id, "only in the destination"))
    return len(seen), differences


def _compare(mine: SessionMetadata, theirs: SessionMetadata) -> list[str]:
    fields = ("epoch", "last_seq", "message_count", "user_id", "title", "created_at")
    found = [
        f"{name}: {getattr(mine, name)!r} != {getattr(theirs, name)!r}"
        for name in fields
        if plain(getattr(mine, name)) != plain(getattr(theirs, name))
    ]
    for name, a, b in zip(
        ("state", "updated_at", "last_activity_at", "expires_at", "ttl", "extra"),
        final_fields(mine),
        final_fields(theirs),
        strict=True,
    ):
        if a != b:
            found.append(f"{name}: {a!r} != {b!r}")
    return found


async def _checksum(store: Storage, session_id: str) -> str:
    digest = hashlib.sha256()
    position = 0
    while True:
        page = await store.read_events(
            session_id, position, limit=PAGE_EVENTS, max_bytes=PAGE_BYTES
        )
        if not page:
            return digest.hexdigest()[:16]
        for event in page:
            digest.update(fingerprint(event))
        position = page[-1].seq
