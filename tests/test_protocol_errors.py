"""Error codes, close codes and typed errors (protocol/errors.py)."""

import pytest

from bamboo_session.protocol import CloseCode, ErrorCode, InvalidTransition, ProtocolError


def test_error_codes_are_those_of_protocol_md() -> None:
    assert {code.value for code in ErrorCode} == {
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "too_large",
        "rate_limited",
        "conflict",
        "closed",
        "internal",
    }
    assert ErrorCode.BAD_REQUEST == "bad_request"


# PROTOCOL.md "Close codes": code -> whether the client should reconnect with resume.
CLOSE_TABLE = {
    1000: False,  # stop
    1001: True,  # reconnect with resume
    1012: True,
    1007: False,  # fix the client (not UTF-8)
    1008: False,  # fix the client
    1009: False,  # fix the sender
    1011: True,  # reconnect with resume
    1013: True,  # reconnect later, with backoff
    4401: False,  # get a token
    4403: False,  # stop
    4404: False,  # stop, or attach with create
    4408: True,  # reconnect
    4409: False,  # stop
    4429: True,  # reconnect with resume
}


def test_close_codes_are_exactly_the_table() -> None:
    assert {int(code) for code in CloseCode} == set(CLOSE_TABLE)


@pytest.mark.parametrize(("code", "resume"), sorted(CLOSE_TABLE.items()))
def test_should_resume(code: int, resume: bool) -> None:
    assert CloseCode(code).should_resume is resume


def test_protocol_error_carries_code_message_and_request_id() -> None:
    error = ProtocolError(ErrorCode.NOT_FOUND, "no such thing", 7)
    assert (error.code, error.message, error.request_id) == (
        ErrorCode.NOT_FOUND,
        "no such thing",
        7,
    )
    assert str(error) == "no such thing"
    assert ProtocolError(ErrorCode.INTERNAL, "x").request_id is None


def test_invalid_transition_is_a_value_error() -> None:
    assert issubclass(InvalidTransition, ValueError)
