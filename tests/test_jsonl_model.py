"""Model-based test: random operations on JsonlStorage and on a plain in-memory model,
with close/reopen steps; after every step the storage and the model agree."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bamboo_session.persistence import (
    Durability,
    InvalidTransition,
    JsonlStorage,
    JsonlStorageConfig,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionNotFound,
)
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    MessageEvent,
    Session,
    SessionState,
)

T = TypeVar("T")

SESSION_IDS = st.sampled_from(["a", "b", "c", "d-1", "e.2"])
USERS = st.sampled_from(["u1", "u2", None])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
KEYS = st.one_of(st.none(), st.text("abc", min_size=1, max_size=3))


@dataclass
class ModelSession:
    user_id: str | None
    state: SessionState = SessionState.ACTIVE
    # (seq, kind, text, key): kind is "token" or "message"
    events: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    epoch: str = ""

    @property
    def messages(self) -> list[str]:
        return [text for _seq, kind, text, _key in self.events if kind == "message"]


class StorageMachine(RuleBasedStateMachine):
    durability: Durability = "fsync"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="bamboo-model-"))
        self.loop = asyncio.new_event_loop()
        # Checkpoint often, and cache few histories, so those paths are exercised too.
        self.config = JsonlStorageConfig(
            self.dir,
            checkpoint_every=3,
            message_cache_size=2,
            max_open_logs=2,
            durability=self.durability,
        )
        self.storage = self.run(JsonlStorage.open(self.config))
        self.model: dict[str, ModelSession] = {}

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.storage.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def expect(self, error: type[Exception] | None, coroutine: Coroutine[Any, Any, T]) -> T | None:
        if error is None:
            return self.run(coroutine)
        try:
            self.run(coroutine)
        except error:
            return None
        raise AssertionError(f"expected {error.__name__}")

    def refusal(self, session_id: str) -> type[Exception] | None:
        """The error an append to this session must raise, if any."""
        session = self.model.get(session_id)
        if session is None:
            return SessionNotFound
        if session.state == SessionState.CLOSED:
            return SessionClosed
        if session.state == SessionState.EXPIRED:
            return SessionExpired
        return None

    @rule(session_id=SESSION_IDS, user_id=USERS)
    def create(self, session_id: str, user_id: str | None) -> None:
        session = Session.new(session_id, user_id=user_id)
        exists = session_id in self.model
        self.expect(SessionExists if exists else None, self.storage.create_session(session))
        if not exists:
            self.model[session_id] = ModelSession(user_id, epoch=session.metadata.epoch)

    @rule(session_id=SESSION_IDS, text=TEXT, key=KEYS)
    def append_event(self, session_id: str, text: str, key: str | None) -> None:
        error = self.refusal(session_id)
        stored = self.expect(
            error, self.storage.append_event(session_id, AgentEvent.token(text), key)
        )
        if error is None:
            session = self.model[session_id]
            assert stored is not None and stored.seq == len(session.events) + 1
            session.events.append((stored.seq, "token", text, key))

    @rule(session_id=SESSION_IDS, text=TEXT, key=KEYS)
    def append_message(self, session_id: str, text: str, key: str | None) -> None:
        error = self.refusal(session_id)
        stored = self.expect(
            error, self.storage.append_message(session_id, Message.user(text), key)
        )
        if error is None:
            session = self.model[session_id]
            assert stored is not None and stored.seq == len(session.events) + 1
            session.events.append((stored.seq, "message", text, key))

    @rule(session_id=SESSION_IDS, texts=st.lists(TEXT, min_size=1, max_size=4))
    def append_batch(self, session_id: str, texts: list[str]) -> None:
        error = self.refusal(session_id)
        items = [(AgentEvent.token(text), None) for text in texts]
        stored = self.expect(error, self.storage.append_events(session_id, items))
        if error is None:
            session = self.model[session_id]
            assert stored is not None
            first = len(session.events) + 1
            assert [e.seq for e in stored] == list(range(first, first + len(texts)))
            session.events.extend(
                (seq, "token", text, None) for seq, text in enumerate(texts, start=first)
            )

    @rule(session_id=SESSION_IDS, state=st.sampled_from(list(SessionState)))
    def update_state(self, session_id: str, state: SessionState) -> None:
        session = self.model.get(session_id)
        if session is None:
            error: type[Exception] | None = SessionNotFound
        elif not session.state.can_become(state):
            error = InvalidTransition
        else:
            error = None
        result = self.expect(error, self.storage.update_session_state(session_id, state))
        if error is None and session is not None:
            assert result is not None and result.state == state
            session.state = state

    @rule(session_id=SESSION_IDS)
    def delete(self, session_id: str) -> None:
        exists = session_id in self.model
        self.expect(None if exists else SessionNotFound, self.storage.delete_session(session_id))
        self.model.pop(session_id, None)

    @rule()
    def cleanup(self) -> None:
        expired = [sid for sid, s in self.model.items() if s.state == SessionState.EXPIRED]
        assert self.run(self.storage.cleanup_expired_sessions()) == len(expired)
        for session_id in expired:
            del self.model[session_id]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def checkpoint(self, data: st.DataObject) -> None:
        session_id = data.draw(st.sampled_from(sorted(self.model)))
        self.run(self.storage.checkpoint(session_id))

    @rule()
    def reopen(self) -> None:
        self.run(self.storage.close())
        self.storage = self.run(JsonlStorage.open(self.config))

    @rule()
    def reopen_without_snapshot(self) -> None:
        self.run(self.storage.close())
        (self.config.layout.index / "snapshot.msgpack").unlink(missing_ok=True)
        self.storage = self.run(JsonlStorage.open(self.config))

    @invariant()
    def agrees_with_model(self) -> None:
        self.run(self._compare())

    async def _compare(self) -> None:
        storage = self.storage
        listed = await storage.list_sessions(SessionFilter(limit=100))
        assert {m.id for m in listed.sessions} == set(self.model)
        for user in ("u1", "u2"):
            mine = await storage.list_user_sessions(user)
            assert {m.id for m in mine} == {
                sid for sid, s in self.model.items() if s.user_id == user
            }
        for session_id, session in self.model.items():
            meta = await storage.get_metadata(session_id)
            assert meta is not None
            assert (meta.state, meta.user_id, meta.epoch) == (
                session.state,
                session.user_id,
                session.epoch,
            )
            assert meta.last_seq == len(session.events)
            assert meta.message_count == len(session.messages)
            events = await storage.read_events(session_id)
            assert [(e.seq, _text(e.event), e.key) for e in events] == [
                (seq, text, key) for seq, _kind, text, key in session.events
            ]
            if session.state == SessionState.EXPIRED:
                continue
            history = await storage.get_session_history(session_id)
            assert [m.content for m in history] == session.messages


def _text(event: object) -> str:
    if isinstance(event, MessageEvent):
        return event.message.content
    content = getattr(event, "content", None)
    assert isinstance(content, str)
    return content


class MemoryModeMachine(StorageMachine):
    """The same in ``memory`` mode, where appends return before they are written."""

    durability: Durability = "memory"


_settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
StorageMachine.TestCase.settings = _settings
MemoryModeMachine.TestCase.settings = settings(_settings, max_examples=30)
TestJsonlStorageModel = StorageMachine.TestCase
TestJsonlStorageModelMemoryMode = MemoryModeMachine.TestCase
