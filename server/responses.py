"""HTTP answers on the WebSocket port: plain text, JSON, the JSON error body every
refusal carries (``{"error": {"code": …, "message": …}}``), and an answer whose body is
streamed after its head (``StreamedResponse``). What they hold until their peers take
them is counted in server/unread_answers.py."""

from __future__ import annotations

import dataclasses
import email.utils
import http
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

_json = msgspec.json.Encoder()


def text_response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


@dataclasses.dataclass
class StreamedResponse(Response):
    """An answer whose head is sent as websockets sends any answer's, and whose body,
    ``pieces``, is written after it, each as one chunk (``Transfer-Encoding: chunked``)
    once the previous one is taken (server/http_stream.py). A HEAD's answer is its head
    alone: ``pieces`` is never started then.

    What the server holds of it is charged to ``UnreadAnswers`` from when it is
    read: ``held`` bytes of its first piece, read already (refused with 503, as any
    answer, when they do not fit), then, before each later piece is read, room for
    ``piece_bytes()`` (about the most the next piece holds). To an HTTP/1.0 request,
    which knows no chunks, the pieces are written as they are (``chunked`` False)."""

    pieces: AsyncIterator[bytes] | None = None
    held: int = 0
    piece_bytes: Callable[[], int] = int  # of the next piece: asked before it is read
    # Awaited before room is taken for each later piece, and so before it is read: None
    # goes on, a reason ends the answer there (its peer gone, a debt past the page
    # timeout). The read allowance's pace (http_pages.py).
    ready: Callable[[], Awaitable[str | None]] | None = None
    # False for an HTTP/1.0 request: the pieces as they are, the body ended by the close.
    chunked: bool = True


def last_on_its_connection(response: Response) -> Response:
    """``response`` saying that its connection closes after it, which it does (one
    request is answered per connection): ``Connection: close``, which a server that
    keeps no connection open must send (RFC 9112 9.6), else a keep-alive client (Node's
    default agent, a pooled session) sends its next request on the closed socket and
    fails. With the ``Date`` an origin server sends (RFC 9110 6.6.1)."""
    if "Connection" not in response.headers:
        response.headers["Connection"] = "close"
    if "Date" not in response.headers:
        response.headers["Date"] = email.utils.formatdate(usegmt=True)
    return response


def json_response(status: http.HTTPStatus, payload: Any) -> Response:
    return text_response(status, _json.encode(payload), "application/json")


def error_response(
    status: http.HTTPStatus, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The JSON error answer, with ``headers`` beside the usual ones (Allow, Upgrade…)."""
    response = json_response(status, {"error": {"code": code, "message": message}})
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def answers_busy() -> Response:
    """503: answers not yet read by their peers fill the server's account of them
    (unread_answers.py)."""
    return error_response(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "internal",
        "busy: answers not yet read by their peers fill the server's buffer; retry later",
        {"Retry-After": "1"},
    )


def answers_over_share() -> Response:
    """429: the asking peer's own unread answers fill its share of that account."""
    return error_response(
        http.HTTPStatus.TOO_MANY_REQUESTS,
        "rate_limited",
        "your answers not yet read fill your share of the server's buffer; read them, "
        "or retry later",
        {"Retry-After": "1"},
    )
