"""The condition a state write may take (``update_session_state``'s
``unless_updated_since``, persistence/base.py): the ``updated_at`` its caller read, so
that a session written since (activity, or another writer's state) is left as it is.
Every backend checks it in the step that moves the state; the in-process ones with
:func:`updated_since`."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from bamboo_session.protocol.models import SessionState

_FINAL_STATES: Final = frozenset({SessionState.CLOSED, SessionState.EXPIRED})


def check_condition(state: SessionState, unless_updated_since: datetime | None) -> None:
    """ValueError for a condition on a move to a final state: a close or an expiry is
    not withheld for activity (and the Redis store may publish a close for the script
    having run, moved or not)."""
    if unless_updated_since is not None and state in _FINAL_STATES:
        raise ValueError(f"a move to {state.value} takes no condition")


def updated_since(updated_at: datetime, unless_updated_since: datetime | None) -> bool:
    """Whether a session whose ``updated_at`` is this was written after its writer read
    ``unless_updated_since`` (None: no condition, never)."""
    return unless_updated_since is not None and updated_at != unless_updated_since
