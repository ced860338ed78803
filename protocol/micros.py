"""Times as whole microseconds since the Unix epoch, UTC: how the Redis store keeps
them in its sorted sets and scripts, and how a listing's cursor carries its sort key.
A naive time is read as UTC, as everywhere on the wire (docs/protocol.md, Times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    # In integers: a float of seconds loses microseconds past 2^53 of them.
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
