"""The storage contract's small value types (persistence/base.py re-exports them, the
contract's one import path): what an append made of each item (:class:`Appended`), a
page of a history (:class:`HistoryPage`), and the caps on a new session's user that a
store counting them checks as it creates the session (:class:`OwnerCaps`)."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from bamboo_session.protocol.models import Message


class OwnerCaps(NamedTuple):
    """Caps on the sessions of a new session's user, which a store that counts them
    (``counts_owner_caps``) checks in the step that creates it: sessions not closed
    (``live``), and sessions in all, closed and expired ones too (``stored``); 0: no
    cap. A session it replaces (``replace_expired``) goes with the creation, so it is
    not counted."""

    live: int = 0
    stored: int = 0


class Appended(msgspec.Struct, frozen=True, gc=False):
    """What one appended item became: its seq, and whether it was a duplicate (then
    ``seq`` is the seq its key was first accepted with, and nothing was appended).

    One is made per appended item, on the hot path, and lives until the item is
    acknowledged: a struct of two scalars, out of the cycle collector's sight (a named
    tuple stays tracked for life, and costs five times as much to make)."""

    seq: int
    duplicate: bool = False


class HistoryPage(msgspec.Struct):
    """Messages ``start .. start + len(messages)`` of a history (indexes from 0, oldest
    first); ``has_more`` says whether older ones exist before ``start``."""

    messages: list[Message]
    start: int
    has_more: bool
