"""atheris harness: what the Redis store decodes of the bytes it reads back
(persistence/redis/layout.py and presence.py): a published batch of events (the
pub/sub listener's ``events_from_batch``), a presence notice, an XRANGE entry.

Redis is written only by this store's own scripts, so a malformed value there is a
bug or a foreign writer, not a peer: the harness holds the decoders to refusing it
with ``msgspec.DecodeError`` (a ``ValueError``), a missing field (``KeyError``) or an
out-of-range time, and to giving back, of a batch it accepts, each event's JSON as
published. (A seq below 1 is taken: only the store's scripts write there.)
"""

from __future__ import annotations

import atheris
import msgspec
from harness import run

with atheris.instrument_imports(include=["bamboo_session"]):
    from bamboo_session.persistence.redis import presence
    from bamboo_session.persistence.redis.layout import event_from_entry, events_from_batch

REFUSALS = (ValueError, KeyError, OverflowError)  # msgspec.DecodeError is a ValueError


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    try:
        if mode == 0:
            _epoch, events = events_from_batch(body)
            for event in events:
                msgspec.json.decode(event.event_json)  # JSON, as published
        elif mode == 1:
            presence._decoder.decode(body)
        else:
            entry_id, _, rest = body.partition(b"\x00")
            fields = rest.split(b"\x00")
            event_from_entry([entry_id, fields[: len(fields) // 2 * 2]])
    except REFUSALS:
        return


def _seeds() -> list[bytes]:
    batch = b'[[0,0,"ep",null],[1,1700000000000000,"k",{"type":"token","text":"x"}]]'
    notice = b'{"s":"s","c":"c","r":"client","j":true,"n":1,"i":"i"}'
    entry = b"1-0\x00e\x00" + b'{"type":"token","text":"x"}' + b"\x00t\x001700000000000000"
    return [b"\x00" + batch, b"\x01" + notice, b"\x02" + entry]


if __name__ == "__main__":
    run("redis", one_input, _seeds(), ['"type"', '"text"', "null", "[", "]", ","])
