"""HTTP answers on the WebSocket port: plain text, JSON, and the JSON error body every
refusal carries (``{"error": {"code": …, "message": …}}``)."""

from __future__ import annotations

import http
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


def json_response(status: http.HTTPStatus, payload: Any) -> Response:
    return text_response(status, _json.encode(payload), "application/json")


def error_response(status: http.HTTPStatus, code: str, message: str) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}})
