"""The failure table: what a peer is told for each kind of failure."""

from __future__ import annotations

import http

from bamboo_session.persistence.base import (
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    StorageError,
    StorageFull,
)
from bamboo_session.protocol.errors import CloseCode, ErrorCode, ProtocolError
from bamboo_session.server.auth import Forbidden, Unauthorized
from bamboo_session.server.failures import (
    ServerBusy,
    failure_of,
    is_expected,
    request_error,
    subscription_end,
)
from bamboo_session.server.limits import TooManyConnections


def test_each_failure_has_its_codes() -> None:
    cases = {
        SessionNotFound("x"): (CloseCode.NOT_FOUND, ErrorCode.NOT_FOUND, 404),
        SessionExpired("x"): (CloseCode.NOT_FOUND, ErrorCode.NOT_FOUND, 404),
        SessionClosed("x"): (CloseCode.SESSION_CLOSED, ErrorCode.CLOSED, 409),
        ServerBusy("x"): (CloseCode.TRY_AGAIN_LATER, ErrorCode.INTERNAL, 503),
        StorageFull("x"): (CloseCode.TRY_AGAIN_LATER, ErrorCode.INTERNAL, 503),
        StorageError("disk"): (CloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL, 503),
        Unauthorized("token expired"): (CloseCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED, 401),
        Forbidden("not your session"): (CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN, 403),
        TooManyConnections("x"): (CloseCode.TOO_SLOW, ErrorCode.RATE_LIMITED, 429),
    }
    for exc, (close, error, status) in cases.items():
        failure = failure_of(exc)
        assert (failure.close, failure.error, failure.status) == (close, error, status), exc
        assert is_expected(exc)
        assert len(failure.reason.encode()) <= 123  # fits a close frame


def test_close_reasons_never_carry_ids_or_paths() -> None:
    long_id = "s" * 128
    for exc in (SessionNotFound(long_id), StorageError(f"/var/lib/bamboo/{long_id}: EIO")):
        assert long_id not in failure_of(exc).reason


def test_storage_errors_tell_requests_the_cause() -> None:
    error = request_error(StorageError("[Errno 28] No space left on device"), 7)
    assert error.code == ErrorCode.INTERNAL and error.request_id == 7
    assert error.message.startswith("storage failed; retry later")
    assert "No space left" in error.message


def test_auth_refusals_keep_their_fixed_texts() -> None:
    assert failure_of(Unauthorized("token expired")).reason == "token expired"
    assert failure_of(Forbidden("not your session")).message(Forbidden("x")) == "not your session"


def test_protocol_errors_keep_their_code() -> None:
    failure = failure_of(ProtocolError(ErrorCode.BAD_REQUEST, "missing field", 3))
    assert failure.error == ErrorCode.BAD_REQUEST and failure.status == http.HTTPStatus.BAD_REQUEST


def test_anything_else_is_internal_and_says_nothing() -> None:
    failure = failure_of(KeyError("secret detail"))
    assert (failure.close, failure.error, failure.status) == (
        CloseCode.INTERNAL_ERROR,
        ErrorCode.INTERNAL,
        http.HTTPStatus.INTERNAL_SERVER_ERROR,
    )
    assert failure.message(KeyError("secret detail")) == "internal error"
    assert not is_expected(KeyError("x"))


def test_how_a_store_ended_subscription_closes_connections() -> None:
    assert subscription_end("closed") == (CloseCode.NORMAL, "session closed")
    assert subscription_end("deleted") == (CloseCode.NOT_FOUND, "session deleted")
    assert subscription_end("unsubscribed")[0] == CloseCode.SERVICE_RESTART
