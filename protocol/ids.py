"""Identifiers: session id validation and unguessable ids for connections and sessions."""

from __future__ import annotations

import re
import secrets

from .errors import InvalidSessionId

_SESSION_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def is_valid_session_id(session_id: object) -> bool:
    return (
        isinstance(session_id, str)
        and _SESSION_ID.fullmatch(session_id) is not None
        and session_id not in (".", "..")
    )


def check_session_id(session_id: object) -> str:
    """``session_id`` itself when it is valid, else :class:`InvalidSessionId`."""
    if not is_valid_session_id(session_id):
        raise InvalidSessionId(f"invalid session id: {session_id!r:.140}")
    assert isinstance(session_id, str)
    return session_id


def new_session_id() -> str:
    return "s_" + secrets.token_urlsafe(16)


def new_connection_id() -> str:
    return "c_" + secrets.token_urlsafe(16)
