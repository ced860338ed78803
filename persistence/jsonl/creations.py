"""The JSONL store's creation of sessions: a new one (its files written, then in
memory), or one in place of an expired one (``replace_expired``), crash-safe through
``lifecycle.py``; what the create waits for first (a delete under way, an append to the
expired session still being written). A base of :class:`~.storage.JsonlStorage`,
which sets what it uses.
"""

from __future__ import annotations

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import MessageEvent, Session, SessionMetadata

from ..base import OwnerCaps, SessionExists, StorageError, StorageFull
from ..clock import made_at
from .lifecycle import SessionFiles
from .membership import Membership
from .record import SessionRecord, new_metadata
from .tasks import to_completion
from .upkeep import JsonlUpkeep
from .writer import LogWriter


class JsonlCreations(JsonlUpkeep):
    """Creates and replacements, through the storage's session files, membership,
    appender and checkpointer."""

    _files: SessionFiles
    _members: Membership
    _writer: LogWriter

    def _appendable(self, session_id: str, epoch: str | None = None) -> SessionRecord:
        raise NotImplementedError  # the storage's: the record, if it takes appends now

    async def create_session(
        self,
        session: Session,
        *,
        replace_expired: bool = False,
        made_now: bool = False,
        owner_caps: OwnerCaps | None = None,  # counted by its server (one process)
    ) -> None:
        self._require_writable()
        session_id = check_session_id(session.metadata.id)
        await self._settled_for_create(session_id, replace_expired)
        if session_id in self._files.blocked:
            raise StorageError(
                f"session {session_id!r}: a failed replacement could not be undone; "
                "the store finishes it when it is opened again"
            )
        creating = self._files.creating
        old = self._records.get(session_id)
        replacing = old is not None and replace_expired and old.meta.is_expired(self.now())
        if (old is not None and not replacing) or session_id in creating:
            raise SessionExists(f"session {session_id!r} already exists")
        if replacing:
            self._appends.check_wal_kept()  # (the replacement deletes the old session)
        limit = self.config.max_sessions
        if not replacing and limit is not None and len(self._records) + len(creating) >= limit:
            raise StorageFull(f"the storage holds its maximum of {limit} sessions")
        meta = new_metadata(session.metadata, self.config.default_ttl)  # (before: it may fail)
        self._files.reserve(session_id)  # released by the create, however it ends
        self._clock.saw(meta.updated_at, meta.last_activity_at)  # the creator's times stay
        if old is not None:
            await to_completion(self._replace(old, meta, made_now))
        else:
            await to_completion(self._create(meta, made_now))
        if session.messages:  # what the session is made with: not held to the cap
            items = [(MessageEvent(message), None) for message in session.messages]
            await self._appends.append(self._appendable(session_id), items, None, capped=False)

    async def _settled_for_create(self, session_id: str, replace_expired: bool) -> None:
        """Returns once no delete of the session is under way and, for a replacement,
        no append to it taken before it expired is being written, with no await
        between this and the create's look at the session. Stored, such an append was
        acknowledged and renewed the session: it stays (SessionExists), with that
        event, rather than be replaced with it. Refused (as its caller is told), the
        session is expired still, and replaced. No append is taken once it expired, so
        one wait for what is queued settles it."""
        while True:
            await self._files.wait_deleted(session_id)
            old = self._records.get(session_id)
            if not replace_expired or old is None or not old.renewal_pending():
                return
            if not old.meta.is_expired(self.now()):
                return  # (not replaced either way)
            await self._writer.flush()

    async def _create(self, meta: SessionMetadata, made_now: bool) -> None:
        self._admit_new(await self._files.create(meta), made_now)

    def _admit_new(self, record: SessionRecord, made_now: bool) -> None:
        """The new session, its files written, in memory; ``made_now``: active at this
        instant (on disk with its next checkpoint, as an attach's activity is)."""
        if made_now:
            made_at(record.meta, self._clock.stamp())
        self._members.admit(record, new_log=True)
        if made_now:
            self._checkpoints.changed(record)

    async def _replace(self, old: SessionRecord, meta: SessionMetadata, made_now: bool) -> None:
        """The new session in place of ``old``, expired, on disk crash-safe
        (``lifecycle.py``). Once the new checkpoint is beside the old one, the old
        session is forgotten, as at a delete."""
        written = await self._files.write_replacement(meta)
        # Unless a delete or cleanup took it meanwhile (then its files go, or went).
        taken = self._records.get(meta.id) is not old
        if not taken:
            self._appends.deleting_now(self._members.forget(meta.id))
        try:
            record = await self._files.replace(None if taken else old, meta, written)
        except BaseException:
            # Undone (lifecycle.py): the old session is back if its files still are, as
            # after a failed delete, and the next open keeps them: even when the id is
            # blocked, unless its replacement file is still there (that open replaces it).
            if not taken and self._files.expired_stays(meta.id, written):
                await self._restore(old)
            raise
        finally:
            self._appends.deleted(old)
        self._admit_new(record, made_now)
