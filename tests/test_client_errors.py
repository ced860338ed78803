"""What each way a connection ends means to the client (protocol/client/errors.py), and
the reconnect policy's backoff (protocol/client/reconnect.py): no event loop, no socket."""

from __future__ import annotations

import pytest

from bamboo_session.protocol.client import ClientError, Refused, SessionEnded
from bamboo_session.protocol.client.errors import Retry, close_outcome
from bamboo_session.protocol.client.handshake import http_reason
from bamboo_session.protocol.client.reconnect import ReconnectPolicy

# docs/protocol.md "Close codes": the "resume" column.
RESUME = [1001, 1011, 1012, 1013, 4408, 4429]
REFUSED = [1008, 1009, 4401, 4403, 4404]


@pytest.mark.parametrize("code", RESUME)
def test_resumable_close_codes_retry(code: int) -> None:
    outcome = close_outcome(code, "why", None)
    assert isinstance(outcome, Retry) and str(outcome) == f"closed {code} why"


@pytest.mark.parametrize("code", REFUSED)
def test_final_close_codes_refuse_with_code_and_reason(code: int) -> None:
    outcome = close_outcome(code, "no", "session closed")
    assert isinstance(outcome, Refused) and (outcome.code, outcome.reason) == (code, "no")


@pytest.mark.parametrize("code", [1000, 4409])
def test_a_closed_session_ends_with_the_reason_of_its_closed_frame(code: int) -> None:
    outcome = close_outcome(code, "bye", "session closed by the operator")
    assert isinstance(outcome, SessionEnded)
    assert outcome.reason == "session closed by the operator"
    assert close_outcome(code, "bye", None).reason == "bye"  # type: ignore[union-attr]
    assert close_outcome(code, "", None).reason == "session closed"  # type: ignore[union-attr]


@pytest.mark.parametrize("code", [1002, 1005, 3000, 4000, 4999])
def test_a_close_code_the_contract_does_not_list_is_a_refusal(code: int) -> None:
    outcome = close_outcome(code, "?", None)
    assert isinstance(outcome, Refused) and outcome.code == code


def test_no_close_frame_is_a_network_failure_and_resumes() -> None:
    outcome = close_outcome(None, "no close frame received or sent", None)
    assert isinstance(outcome, Retry)
    assert str(outcome) == "connection dropped: no close frame received or sent"
    assert not isinstance(outcome, ClientError)  # never surfaces to a caller


def test_http_reason_reads_the_servers_json_error_or_the_first_line() -> None:
    body = '{"error": {"code": "bad_request", "message": "invalid session id"}}'
    assert http_reason(body) == "invalid session id"
    assert http_reason("Failed to open a WebSocket connection.\nmore") == (
        "Failed to open a WebSocket connection."
    )
    assert http_reason('{"error": "flat"}') == '{"error": "flat"}'
    assert http_reason("") == ""


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    policy = ReconnectPolicy(True, None, backoff_initial=0.1, backoff_max=1.0)
    for _ in range(200):
        assert 0.05 <= policy.delay(0) <= 0.1  # the first retry waits a little at least
        assert 0 <= policy.delay(2) <= 0.4
        assert 0 <= policy.delay(30) <= 1.0  # capped, however many attempts
    assert len({policy.delay(3) for _ in range(50)}) > 1, "jittered"


def test_the_policy_gives_up_after_max_retries_only() -> None:
    assert not ReconnectPolicy(True, None, 0.1, 1).gives_up(10**6)
    limited = ReconnectPolicy(True, 2, 0.1, 1)
    assert [limited.gives_up(a) for a in range(4)] == [False, False, True, True]
