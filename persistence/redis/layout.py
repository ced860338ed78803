"""The Redis key layout of a Bamboo store, and how its values are encoded.

Every key of one session carries the session's hash tag, ``{session_id}``, so a
session lives in one Redis Cluster slot and a script may touch all of its keys::

    <prefix>:{<id>}:meta     hash: the session's metadata (fields below; "bytes" is
                             stored_bytes: its events' JSON and keys)
    <prefix>:{<id>}:log      stream: the event log, entry id "<seq>-0", fields e t [k]
    <prefix>:{<id>}:keys     sorted set: idempotency key -> seq it was accepted with
    <prefix>:{<id>}:msgs     list: the seqs of the log's ``message`` events (history)
    <prefix>:{<id>}:conns    sorted set: connection -> heartbeat deadline (presence)
    <prefix>:{<id>}:gone     sorted set: connections that left lately -> until when
                             (ms); a join or refresh registers none of them
    <prefix>:{<id>}:chan     pub/sub channel: new events and state changes

Each user's connections, for the per-user cap across instances, have a tag of their
own (``u:`` starts no session id)::

    <prefix>:{u:<user>}:conns  sorted set: <instance>:<connection> -> heartbeat deadline
    <prefix>:{u:<user>}:gone   sorted set: the same, released lately -> until when
                               (ms); an acquire or refresh adds none of them

The indexes share one tag of their own, ``{idx}``::

    <prefix>:{idx}:created   sorted sets of session ids, by created_at,
    <prefix>:{idx}:updated   updated_at, last_activity_at, message_count,
    <prefix>:{idx}:active    and expires_at (sessions with a ttl only)
    <prefix>:{idx}:msgs
    <prefix>:{idx}:expires
    <prefix>:{idx}:user:<u>  by created_at: one user's sessions
    <prefix>:{idx}:state:<s> by created_at: the sessions in one state
    <prefix>:{idx}:userbytes hash: user -> the sum of "bytes" of the user's sessions
                             (max_user_bytes; moved by append, import, delete and
                             replacement; counted from 0 where it is first written,
                             until recount.lua and recount_user.lua count what a
                             version before it stored: bamboo-session recount)
    <prefix>:{idx}:rebuild:<u> hash: a rebuild in steps of user <u>'s sum under way
                             (recount_user.lua: token, running sum, cursor score and
                             id), expiring 10 s after its last step
    <prefix>:{idx}:generation hash: run, token, lossy (generation.lua)
    <prefix>:{idx}:generation:marked string: the record held a token or a lossy
                             mark once (without the record: one was deleted)
    <prefix>:{idx}:format    string: the store's format number, "1" (store_format.py)
    <prefix>:{idx}:instances  sorted set: instance -> its latest connection deadline
                             (ms; presence.lua), swept by survivors (orphans.lua)
    <prefix>:{idx}:instance:<name> sorted set: "<id> <epoch>" -> deadline (ms): the
                             sessions the instance registered connections in

``idx`` is a valid session id, whose keys carry this tag too. Of their names only
``msgs`` is an index's as well, so that session's history list is
``<prefix>:{idx}:history`` (``HISTORY_OF_IDX``): sharing the index by message count,
its messages failed for ever (WRONGTYPE) and its delete took the index with it.

Times are integers, microseconds since the Unix epoch, in hashes and scores alike
(exact in a double until the year 2255), so scripts compute expiry without parsing.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from bamboo_session.protocol.micros import from_micros, to_micros
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    MessageEvent,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

# Control messages on a session's channel; event batches start with "[". A script
# that closes or deletes a session publishes the notice of its epoch, b"deleted " +
# epoch, then the bare notice, which a listener that heard the first one skips (an
# older listener ignores the first and acts on the second).
CLOSED_NOTICE: Final = b"closed"
DELETED_NOTICE: Final = b"deleted"
PRESENCE_NOTICE: Final = b"p"  # b"p" + JSON of a presence notice

INDEX_TAG: Final = "idx"  # the indexes' hash tag, a valid session id too
HISTORY_OF_IDX: Final = "history"  # that session's "msgs", an index's name (above)


class Layout:
    """Key and channel names under one prefix."""

    __slots__ = ("index", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = f"{prefix}:{{{INDEX_TAG}}}:"  # scripts append created, user:<u>, ...

    def session(self, session_id: str) -> str:
        """The common start of a session's keys; scripts append meta, log, ..."""
        return f"{self.prefix}:{{{session_id}}}:"

    def session_keys(self, session_id: str) -> list[str]:
        """meta, log, keys, msgs, conns: in the order every script takes them."""
        start = self.session(session_id)
        history = HISTORY_OF_IDX if session_id == INDEX_TAG else "msgs"
        return [start + name for name in ("meta", "log", "keys", history, "conns")]

    def meta(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:meta"

    def log(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:log"

    def conns(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:conns"

    def gone(self, session_id: str) -> str:
        """The session's connections that left lately, which a late join or refresh
        must not register again (presence.lua)."""
        return f"{self.prefix}:{{{session_id}}}:gone"

    def format(self) -> str:
        """The store's format number (store_format.py)."""
        return f"{self.index}format"

    def instances(self) -> str:
        """The instances that registered presence, by their latest connection deadline
        (presence.lua), which survivors sweep once it passed (orphans.lua)."""
        return f"{self.index}instances"

    def instance_sessions(self, instance: str) -> str:
        """The sessions one instance registered connections in, ``<id> <epoch>`` by
        deadline: what a survivor parks once the instance died."""
        return f"{self.index}instance:{instance}"

    def user_conns(self, user: str) -> str:
        """One user's connections on every instance (--max-connections-per-user), in a
        slot of its own: ``u:`` cannot start a session id, whose keys never collide."""
        return f"{self.prefix}:{{u:{user}}}:conns"

    def user_conns_gone(self, user: str) -> str:
        """One user's connections released lately, which a late acquire or refresh
        must not count again (user_conns.lua), in the slot of ``user_conns``."""
        return f"{self.prefix}:{{u:{user}}}:gone"

    def channel(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:chan"

    def session_of_channel(self, channel: bytes) -> str | None:
        """The session id a channel name belongs to, or None for another channel."""
        text = channel.decode()
        start = len(self.prefix) + 2
        if not (text.startswith(f"{self.prefix}:{{") and text.endswith("}:chan")):
            return None
        return text[start:-6]

    def lease(self, name: str) -> str:
        return f"{self.prefix}:{{lease:{name}}}"


# -- metadata <-> hash ----------------------------------------------------------------


def metadata_fields(meta: SessionMetadata) -> list[str | bytes | int]:
    """``meta`` as HSET field/value pairs (absent optional fields are left out)."""
    fields: list[str | bytes | int] = [
        "id",
        meta.id,
        "state",
        meta.state.value,
        "created",
        to_micros(meta.created_at),
        "updated",
        to_micros(meta.updated_at),
        "active",
        to_micros(meta.last_activity_at),
        "msgs",
        meta.message_count,
        "seq",
        meta.last_seq,
        "epoch",
        meta.epoch,
        "extra",
        msgspec.json.encode(meta.extra),
        "bytes",
        meta.stored_bytes,
    ]
    if meta.user_id is not None:
        fields += ["user", meta.user_id]
    if meta.title is not None:
        fields += ["title", meta.title]
    if meta.ttl is not None:
        fields += ["ttl", meta.ttl]
    if meta.expires_at is not None:
        fields += ["expires", to_micros(meta.expires_at)]
    return fields


def metadata_from(reply: list[bytes] | dict[bytes, bytes]) -> SessionMetadata:
    """A session's metadata from an HGETALL reply: flat (field, value, ...) as scripts
    return it, or the dict redis-py makes of it."""
    if isinstance(reply, dict):
        return metadata_from_hash(reply)
    return metadata_from_hash(dict(zip(reply[::2], reply[1::2], strict=True)))


def metadata_from_hash(hash_: dict[bytes, bytes]) -> SessionMetadata:
    def text(name: bytes) -> str | None:
        value = hash_.get(name)
        return None if value is None else value.decode()

    def number(name: bytes) -> int | None:
        value = hash_.get(name)
        return None if value is None else int(value)

    expires = number(b"expires")
    extra: dict[str, Any] = msgspec.json.decode(hash_.get(b"extra", b"{}"))
    return SessionMetadata(
        id=hash_[b"id"].decode(),
        user_id=text(b"user"),
        title=text(b"title"),
        state=SessionState(hash_[b"state"].decode()),
        created_at=from_micros(int(hash_[b"created"])),
        updated_at=from_micros(int(hash_[b"updated"])),
        last_activity_at=from_micros(int(hash_[b"active"])),
        expires_at=None if expires is None else from_micros(expires),
        message_count=int(hash_[b"msgs"]),
        extra=extra,
        last_seq=int(hash_[b"seq"]),
        epoch=hash_[b"epoch"].decode(),
        ttl=number(b"ttl"),
        stored_bytes=number(b"bytes") or 0,  # none: stored before the count, not recounted
    )


def flags_of(key: str | None, event: AnyAgentEvent) -> str:
    """How the scripts learn of an item: ``k`` keyed, ``m`` a message (history)."""
    return ("k" if key is not None else "") + ("m" if isinstance(event, MessageEvent) else "")


# -- stream entries and published batches ----------------------------------------------


def event_from_entry(entry: list[Any]) -> StoredEvent:
    """A StoredEvent from one XRANGE entry: ``[b"<seq>-0", [b"e", json, b"t", us, ...]]``."""
    entry_id, flat = entry
    fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
    key = fields.get(b"k")
    return StoredEvent.from_json(
        int(entry_id.partition(b"-")[0]),
        from_micros(int(fields[b"t"])),
        msgspec.Raw(fields[b"e"]),
        None if key is None else key.decode(),
    )


# A batch as the append script publishes it: [[0, 0, epoch, null], [seq, ts, key,
# event], ...]. The first entry, seq 0, names the epoch of the log; an older listener
# takes it for an event it has seen (every subscription is past seq 0) and skips it.
# A batch with no such entry (an older instance's) is of no epoch in particular.
_Batch = list[tuple[int, int, str | None, msgspec.Raw]]
_batch_decoder = msgspec.json.Decoder(_Batch)


def events_from_batch(payload: bytes) -> tuple[str | None, list[StoredEvent]]:
    """The epoch and the events of a published batch, each event's JSON kept as
    published, in bytes of its own: a decoded Raw is a view of the whole payload, and
    one event kept in a replay ring would keep every other event of its batch with it."""
    entries = _batch_decoder.decode(payload)
    epoch = None
    if entries and entries[0][0] == 0:
        epoch = entries[0][2]
        del entries[0]
    events = [
        StoredEvent.from_json(seq, from_micros(ts), raw.copy(), key)
        for seq, ts, key, raw in entries
    ]
    return epoch, events
