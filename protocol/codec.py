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
from .frames import ClientFrame, PublishEvent, PublishMessage, RequestId, ServerFrame
from .models import Custom, MessageEvent, StoredEvent, ToolStart

JSON_SUBPROTOCOL: Final = "bamboo.v1"
MSGPACK_SUBPROTOCOL: Final = "bamboo.v1.msgpack"


class _RequestIdOnly(msgspec.Struct):
    id: RequestId = None


# Events whose fields hold free-form values (``Any``): only these can carry a value that
# JSON accepts and MessagePack cannot (an integer beyond 64 bits).
_FREE_FORM_EVENTS = (Custom, ToolStart, MessageEvent)
_msgpack_probe = msgspec.msgpack.Encoder()


class Codec:
    """One wire format: how frames become bytes and back."""

    def __init__(
        self,
        name: str,
        subprotocol: str,
        text: bool,
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
        make_decoder: Callable[[Any], msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]],
    ) -> None:
        self.name = name
        self.subprotocol = subprotocol
        self.text = text  # whether frames go out as WebSocket text frames
        self._encode = encoder.encode
        self._client = make_decoder(ClientFrame)
        self._server = make_decoder(ServerFrame)
        self._request_id = make_decoder(_RequestIdOnly)
        self._checks_portability = name == "json"

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    def encode(self, obj: Any) -> bytes:
        return self._encode(obj)

    def decode_client(self, data: bytes | str) -> ClientFrame:
        """A client frame, or :class:`ProtocolError` saying what is wrong with it."""
        if isinstance(data, str):
            data = data.encode()
        try:
            frame: ClientFrame = self._client.decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), self._salvage_id(data)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed frame: {exc}") from None
        if self._checks_portability and isinstance(frame, PublishEvent | PublishMessage):
            _check_portable(frame)
        return frame

    def decode_server(self, data: bytes | str) -> ServerFrame:
        """A server frame (for clients); raises ``msgspec.DecodeError`` when malformed."""
        frame: ServerFrame = self._server.decode(data.encode() if isinstance(data, str) else data)
        return frame

    def _salvage_id(self, data: bytes) -> RequestId:
        try:
            request_id: RequestId = self._request_id.decode(data).id
            return request_id
        except (msgspec.DecodeError, RecursionError):
            return None


def _check_portable(frame: PublishEvent | PublishMessage) -> None:
    payload = frame.event if isinstance(frame, PublishEvent) else frame.message
    if isinstance(frame, PublishMessage) or isinstance(payload, _FREE_FORM_EVENTS):
        try:
            _msgpack_probe.encode(payload)
        except (OverflowError, TypeError, ValueError) as exc:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"value not representable in every codec: {exc}", frame.id
            ) from None


JSON: Final = Codec(
    "json", JSON_SUBPROTOCOL, True, msgspec.json.Encoder(), lambda t: msgspec.json.Decoder(t)
)
MSGPACK: Final = Codec(
    "msgpack",
    MSGPACK_SUBPROTOCOL,
    False,
    msgspec.msgpack.Encoder(),
    lambda t: msgspec.msgpack.Decoder(t),
)
CODECS_BY_SUBPROTOCOL: Final = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
SUBPROTOCOLS: Final = (JSON.subprotocol, MSGPACK.subprotocol)

# The storage line format: one StoredEvent per line, JSON.
_log_encoder = msgspec.json.Encoder()
_log_decoder = msgspec.json.Decoder(StoredEvent)


def encode_stored_event(event: StoredEvent) -> bytes:
    """One event-log line (without the trailing newline)."""
    return _log_encoder.encode(event)


def decode_stored_event(line: bytes) -> StoredEvent:
    return _log_decoder.decode(line)
