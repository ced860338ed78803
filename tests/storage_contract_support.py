"""Helpers of the storage contract suite (test_storage_contract*.py): a new session in a
store, and events to append in a batch."""

from __future__ import annotations

from bamboo_session.persistence import Storage
from bamboo_session.protocol.models import AgentEvent, Session, Token


async def new_session(store: Storage, session_id: str = "s1", **fields: object) -> Session:
    session = Session.new(session_id, **fields)  # type: ignore[arg-type]
    await store.create_session(session)
    return session


def tokens(*texts: str) -> list[tuple[Token, str | None]]:
    return [(AgentEvent.token(text), None) for text in texts]
