"""JSON and MessagePack codecs for frames: one encoder and one decoder each, built once.

Both codecs carry exactly the same objects. Decoding failures become
:class:`ProtocolError` (``bad_request``), never a bare exception, so the server maps
every malformed frame to an ``error`` reply the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from .errors import ErrorCode, ProtocolError
from .frames import (
    ClientFrame,
    IdempotencyKey,
    PublishBatch,
    PublishEvent,
    PublishMessage,
    RequestId,
    ServerFrame,
)
from .free_form import FREE_VALUE_BYTES, free_form_problem, held_at_most
from .hello_id import HelloIdReader
from .leap_seconds import INVALID_TIME, LeapSecondReader
from .malformed import quoting_at_most, why_malformed
from .models import AnyAgentEvent, MessageEvent
from .published import (
    PLAIN_EVENT_TYPES,
    check_batch,
    check_published,
    free_form_fields,
    holds_time,
)

# Imported from here by the client and the JSONL store, as before published.py.
from .published import check_content as check_content
from .published import free_form_values as free_form_values
from .time_fractions import FractionCheck

JSON_SUBPROTOCOL: Final = "bamboo.v1"
MSGPACK_SUBPROTOCOL: Final = "bamboo.v1.msgpack"


class _RequestIdOnly(msgspec.Struct):
    id: RequestId = None


# The publishes checked as decoded: a tuple made once (``A | B`` written in the test
# made a union at every frame read, some 400 machine instructions).
_PUBLISHES: Final = (PublishEvent, PublishMessage)


class Codec:
    """One wire format: how frames become bytes and back."""

    def __init__(
        self,
        name: str,
        subprotocol: str,
        text: bool,
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
        make_decoder: Callable[[Any], msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]],
        to_wire: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name = name
        self.subprotocol = subprotocol
        self.text = text  # whether frames go out as WebSocket text frames
        self._encode = encoder.encode
        self._to_wire = to_wire  # turns an object into what the encoder must see, if set
        self._client = make_decoder(ClientFrame)
        self._server = make_decoder(ServerFrame)
        self._request_id = make_decoder(_RequestIdOnly)
        self._leap_seconds = LeapSecondReader(make_decoder, encoder.encode, json=text)
        self._fractions = FractionCheck(make_decoder, json=text)
        self._hello_ids = HelloIdReader(make_decoder)

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    def encode(self, obj: Any) -> bytes:
        """``obj`` on the wire. A ``msgspec.Raw`` inside holds JSON (an event's bytes as
        stored), which the MessagePack codec converts."""
        if self._to_wire is not None:
            obj = self._to_wire(obj)
        return self._encode(obj)

    def encode_envelope(self, obj: Any) -> bytes:
        """``obj`` encoded as it is, without what :meth:`encode` converts: a frame of
        strings, integers and ``msgspec.Raw`` pieces already in this codec's encoding
        (the client's publishes, encoded once, then framed alone or in a batch)."""
        return self._encode(obj)

    def decode_client(self, data: bytes | str) -> ClientFrame:
        """A client frame, or :class:`ProtocolError` (``bad_request``) saying what is
        wrong with it; never another exception, whatever the input."""
        return self._decode(data)[0]

    def _decode(self, data: bytes | str) -> tuple[ClientFrame, int]:
        """:meth:`decode_client`, and how many free-form values the frame holds. Read
        again: a frame refused for a time, each leap second read (leap_seconds.py); a
        publish whose message's time may have been rounded, truncated instead
        (time_fractions.py); a hello refused for its id, without it (hello_id.py)."""
        try:
            # msgspec reads JSON from a str as it is; MessagePack only from bytes.
            raw: Any = data.encode() if isinstance(data, str) and not self.text else data
            try:
                frame: ClientFrame = self._client.decode(raw)
            except msgspec.ValidationError as exc:
                reason = str(exc)
                if reason.startswith(INVALID_TIME):
                    read = self._leap_seconds.decode(raw)
                else:
                    read = self._hello_ids.decode(raw, reason)
                if read is None:  # raised again here: see hello_id.py
                    raise
                frame = read
        except msgspec.ValidationError as exc:
            reason = quoting_at_most(str(exc))
            raise ProtocolError(ErrorCode.BAD_REQUEST, reason, self._salvage_id(raw)) from None
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            why = why_malformed(exc, data, json=self.text)
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed frame: {why}") from None
        if type(frame) is PublishEvent and type(frame.event) in PLAIN_EVENT_TYPES:
            return frame, 0  # a streamed token: no value, no time (what check_published says)
        if isinstance(frame, _PUBLISHES):
            published = frame
            if isinstance(frame, PublishMessage) or type(frame.event) is MessageEvent:
                published = self._times_read(raw, frame)
            return published, check_published(published)
        if type(frame) is PublishBatch:
            values, timed = check_batch(frame)
            if timed and self._fractions.rounded(raw):
                batch: PublishBatch = self._read_again(raw, frame.id)
                return batch, check_batch(batch)[0]
            return frame, values
        return frame, 0

    def _times_read(self, raw: Any, frame: PublishEvent | PublishMessage) -> Any:
        """``frame``, or, if its message's time may have been rounded, the frame read
        again with it truncated (time_fractions.py)."""
        if isinstance(frame, PublishMessage):
            timed = holds_time(None, frame.message)
        else:
            timed = holds_time(frame.event, None)
        if timed and self._fractions.rounded(raw):
            return self._read_again(raw, frame.id)
        return frame

    def _read_again(self, raw: Any, request_id: RequestId) -> Any:
        """``raw``, a publish the typed decoder read, read again, each message's time
        read as the server reads it (leap_seconds.py ``read_again``): the same frame,
        but for those times."""
        try:
            return self._leap_seconds.read_again(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            # Never met (the typed decoder read the frame), but refused so if it were.
            reason = "a message's time could not be read again"
            raise ProtocolError(ErrorCode.BAD_REQUEST, reason, request_id) from None

    def decode_frame(self, data: bytes | str) -> ClientFrame:
        """A client frame as received: ``str`` for a WebSocket text frame (already
        checked as UTF-8), ``bytes`` for a binary one. A frame of the other type than
        this codec's is ``bad_request``, as a malformed frame is."""
        return self.decode_request(data)[0]

    def decode_request(self, data: bytes | str) -> tuple[ClientFrame, int]:
        """:meth:`decode_frame`, and what the frame weighs decoded (what every byte
        bound of the requests a server holds counts): :meth:`decode_weighed`."""
        frame, _, weight = self.decode_weighed(data)
        return frame, weight

    def decode_weighed(self, data: bytes | str) -> tuple[ClientFrame, int, int]:
        """:meth:`decode_frame`; its bytes and ``FREE_VALUE_BYTES`` per free-form value
        (what its decode cost, as the byte rate counts it); and what it weighs decoded:
        the same, its bytes replaced by what its strings' characters hold at most where
        that may be more (a str is as wide as its widest character: 4 bytes each with an
        emoji), free_form.py ``held_at_most``."""
        if isinstance(data, str) != self.text:
            kind = "binary" if self.text else "text"
            message = f"a {kind} frame on the {self.subprotocol} subprotocol"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message, _id_of_any_kind(data))
        frame, values = self._decode(data)
        size = len(data)
        cost = size + values * FREE_VALUE_BYTES
        # Its strings bounded by its bytes where that is cheap (plain ASCII JSON; a small
        # frame, MessagePack's every one included), walked where not (free_form.py).
        return frame, cost, cost - size + held_at_most(data, frame)

    def refused_weight(self, data: bytes | str) -> int:
        """The most a frame that :meth:`decode_request` refused may have weighed
        decoded: its bytes, and ``FREE_VALUE_BYTES`` for each value its bytes could
        hold, since it was decoded up to its fault, which may be its end (a frame past
        the free-form values bound was decoded whole, then counted only to the bound).
        MessagePack holds a value in a byte; JSON in two (``0,``), and no more than its
        separators and openings, counted at a fraction of a decode's cost. The server
        charges the time the decode took, at most this (server/decode_charge.py): in
        MessagePack, a frame of long strings with a bad field first weighs this much
        too."""
        if not self.text:
            return len(data) * (1 + FREE_VALUE_BYTES)
        if isinstance(data, str):
            most = 1 + data.count(",") + data.count("[") + data.count("{")
        else:
            most = 1 + data.count(b",") + data.count(b"[") + data.count(b"{")
        return len(data) + min((len(data) + 1) // 2, most) * FREE_VALUE_BYTES

    def decode_server(self, data: bytes | str) -> ServerFrame:
        """A server frame (for clients); raises ``msgspec.DecodeError`` when malformed."""
        frame: ServerFrame = self._server.decode(data.encode() if isinstance(data, str) else data)
        return frame

    def _salvage_id(self, data: bytes | str) -> RequestId:
        try:
            request_id: RequestId = self._request_id.decode(data).id  # type: ignore[arg-type]
            return request_id
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            return None


_json_id = msgspec.json.Decoder(_RequestIdOnly)
_msgpack_id = msgspec.msgpack.Decoder(_RequestIdOnly)


def _id_of_any_kind(data: bytes | str) -> RequestId:
    """The ``id`` of a frame sent with the wrong type for the subprotocol, read as what
    it most likely holds: a text frame JSON, a binary one MessagePack (or JSON)."""
    decoders = (_json_id,) if isinstance(data, str) else (_msgpack_id, _json_id)
    raw = data.encode() if isinstance(data, str) else data
    for decoder in decoders:
        try:
            request_id: RequestId = decoder.decode(raw).id
            return request_id
        except (msgspec.DecodeError, RecursionError):
            continue
    return None


JSON: Final = Codec(
    "json", JSON_SUBPROTOCOL, True, msgspec.json.Encoder(), lambda t: msgspec.json.Decoder(t)
)


def _msgpack_raw(obj: Any) -> Any:
    if isinstance(obj, msgspec.Raw):  # an event's JSON (StoredEvent.event_json)
        return msgspec.json.decode(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _as_json_objects(obj: Any) -> Any:
    """``obj`` as the plain objects its JSON encoding carries.

    msgspec writes a datetime to MessagePack as a timestamp extension, but PROTOCOL.md
    wants RFC 3339 strings in both codecs (and bytes as base64, keys as strings, as in
    JSON). So MessagePack frames are built from the same builtins JSON would show.
    """
    return msgspec.to_builtins(obj, str_keys=True, enc_hook=_msgpack_raw)


MSGPACK: Final = Codec(
    "msgpack",
    MSGPACK_SUBPROTOCOL,
    False,
    msgspec.msgpack.Encoder(),
    lambda t: msgspec.msgpack.Decoder(t),
    to_wire=_as_json_objects,
)
CODECS_BY_SUBPROTOCOL: Final = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
SUBPROTOCOLS: Final = (JSON.subprotocol, MSGPACK.subprotocol)


_appended_encoder = msgspec.json.Encoder()
_appended_decoder: msgspec.json.Decoder[AnyAgentEvent] = msgspec.json.Decoder(AnyAgentEvent)


def checked_event(event: AnyAgentEvent) -> tuple[AnyAgentEvent, int]:
    """An event appended in-process, as a peer's frame would bring it: its free-form
    values checked as the wire checks them, then encoded and decoded with the wire's
    types, so that what is stored is what every reader can read back, and a copy:
    nothing of the caller's object graph is kept. With the copy, what it weighs in the
    session's queue: its JSON's bytes, and ``FREE_VALUE_BYTES`` per free-form value (at
    most ``MAX_FREE_VALUES``, as in a frame). ``ValueError`` says what is wrong."""
    message = event.message if isinstance(event, MessageEvent) else None
    for value in free_form_fields(event, message):  # on the caller's own values: a
        if (problem := free_form_problem(value)) is not None:  # NaN would become null
            raise ValueError(f"event cannot be stored: value not carried by every codec: {problem}")
    try:
        encoded = _appended_encoder.encode(event)
        copy = _appended_decoder.decode(encoded)
        values = check_content(copy, None, None, to_utc=True)
    except (TypeError, msgspec.EncodeError, msgspec.DecodeError) as exc:
        raise ValueError(f"event cannot be stored: {exc}") from None
    except ProtocolError as exc:
        raise ValueError(f"event cannot be stored: {exc.message}") from None
    return copy, len(encoded) + values * FREE_VALUE_BYTES


def checked_key(key: str | None) -> str | None:
    """An idempotency key given in-process, held to the wire's rules (a string of at
    most 128 characters), as a plain ``str``. ``ValueError`` says what is wrong."""
    try:
        checked = msgspec.convert(key, IdempotencyKey | None)
    except msgspec.ValidationError as exc:
        raise ValueError(f"key cannot be stored: {exc}") from None
    # A str subclass could carry any object along; the key is kept for a long time.
    return None if checked is None else "".join([checked])
