"""The JSONL store's event-log line: one StoredEvent per line, its AgentEvent kept as the
JSON it came in (never decoded to be written, nor until someone reads ``.event``). The
storage's format, not the wire's: the wire's frames are in :mod:`.codec`."""

from __future__ import annotations

from datetime import datetime

import msgspec

from .models import StoredEvent


class _LogLine(msgspec.Struct, omit_defaults=True):
    """An event-log line: the StoredEvent with its AgentEvent as embedded JSON."""

    seq: int
    ts: datetime
    event: msgspec.Raw
    key: str | None = None


# The storage line format: one StoredEvent per line, JSON.
_log_encoder = msgspec.json.Encoder()
_log_decoder = msgspec.json.Decoder(_LogLine)


def encode_stored_event(event: StoredEvent) -> bytes:
    """One event-log line (without the trailing newline), around the event's JSON."""
    return _log_encoder.encode(_LogLine(event.seq, event.ts, event.event_json, event.key))


def decode_stored_event(line: bytes) -> StoredEvent:
    """A log line back; its AgentEvent stays JSON until someone reads ``.event``.
    Raises ``msgspec.DecodeError`` when the line is not a log line."""
    parsed = _log_decoder.decode(line)
    return StoredEvent.from_json(parsed.seq, parsed.ts, parsed.event, parsed.key)
