"""The storage contract's exceptions (persistence/base.py says when each is raised;
``persistence.base`` and ``persistence`` export them all): a failing store
(:class:`StorageError`, the base of every other), a write whose outcome the store
cannot know, a session missing, present, expired, closed or full (its own cap, or its
user's), deleted but not durably, taking no appends until the store is opened again,
or whose append failed for a reason of its own file alone, a store full or held by
another process, a backend run with settings the store refuses, or a store of a
format newer than this version reads."""

from __future__ import annotations


class StorageError(Exception):
    """Storage failed (I/O error, disk full, corrupt file, store unreachable). The failed
    call was not acknowledged; see ``append_events`` for whether it took effect."""

    # Whether the server's log told of it already (server/command_failures.py), so that
    # a hello it then ends (1011) tells it no second time.
    told = False


class OutcomeUnknown(StorageError):
    """A write whose outcome the store cannot know: it may have taken effect. Its
    command may have reached the store, whose answer was lost (a socket timeout, a
    connection dropped mid-call: a Redis that hung past the timeout runs the command
    once it goes on), or it took effect short of the durability asked for (a Redis
    ``WAIT`` that fewer replicas than ``wait_replicas`` confirmed in time), or it was
    made and the notice of it could not be sent. Only a store whose writes go over a
    network raises it (Redis); a store one process owns knows what it stored. Of an
    append: a retry with the same keys tells (a duplicate, with its seq, if it was
    stored); a server does not answer its publisher with an ``ack`` or an ``error``,
    but closes its connection to resume by (server/commands.py)."""


class SessionNotFound(StorageError):
    pass


class SessionExists(StorageError):
    pass


class SessionExpired(StorageError):
    pass


class SessionClosed(StorageError):
    """The session is closed: its history is readable, nothing more is appended."""


class SessionFull(StorageError):
    """The append would take the session past the store's ``max_session_bytes``:
    nothing of it was stored, and the session stays readable (and takes appends that
    fit, duplicates among them). Not a failure of the store: retrying does not help."""

    def __init__(self, stored: int, adding: int, cap: int) -> None:
        super().__init__(
            f"the session holds {stored} of its {cap} stored bytes at most, and this "
            f"append would add {adding}; nothing was stored"
        )
        self.stored = stored
        self.adding = adding
        self.cap = cap


class UserFull(SessionFull):
    """The append would take the sessions of its session's user past the store's
    ``max_user_bytes``: nothing of it was stored. The user frees room by deleting
    sessions (closed ones count until they are deleted or cleaned up)."""

    def __init__(self, user_id: str, stored: int, adding: int, cap: int) -> None:
        StorageError.__init__(
            self,
            f"the sessions of user {user_id!r} hold {stored} of the user's {cap} stored "
            f"bytes at most, and this append would add {adding}; nothing was stored "
            "(delete sessions of the user to free room)",
        )
        self.user_id = user_id
        self.stored = stored
        self.adding = adding
        self.cap = cap


class AppendsSuspended(StorageError):
    """The session takes no appends until the store is opened again (the JSONL store,
    after a delete it undid by a rename not known durable: a power cut may yet finish
    that delete; or, for every session, once the WAL it keeps whole after a failed
    sync passes ``wal_kept_max_bytes``: then it takes no deletes either, raising this
    from ``delete_session`` and from a create that replaces an expired session). Nothing
    was stored, and retrying fails the same way until that open; after it, a retry
    with the same key is safe. The session stays readable."""


class DeletedNotDurably(StorageError):
    """A delete took effect: the session is gone for every reader, and the next open of
    the store finishes it (the JSONL store without its WAL: the checkpoint became the
    tombstone), but the sync that would make it durable failed, and nothing else
    records it: a power cut before that open may bring the session back, whole. Raised
    by ``delete_session`` so that its caller may say so; a caller that only needs the
    session gone takes it as a delete done (its peers are closed 4404, a cleanup round
    counts it). Logged by the store where it happens, once."""

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(
            f"session {session_id!r} is deleted, not durably until the next open: {reason}"
        )
        self.session_id = session_id
        self.reason = reason


class SessionRefused(StorageError):
    """The store refused a call, not for a failure of its own, but because what the call
    named changed meanwhile: the Redis store's ``HistoryLost`` (the session's log as an
    earlier generation of the store served it, before a restart of a Redis that may
    lose writes; its peers resume under the new epoch) and ``Fenced`` (a lease that
    another instance holds now). Nothing was stored, and the store serves other calls
    as before: a server does not count it as an outage (``/readyz`` stays ready)."""


class SessionLogFailed(StorageError):
    """An append failed for a reason of the session's own file alone, not the store's:
    the JSONL store's log of the session at the file system's size limit (EFBIG), one
    the store may not write (EACCES, EPERM: the log's own mode, not its directory's,
    which refuses every log), a directory in its place (EISDIR); the Redis store's own
    keys of the session holding another type (WRONGTYPE; not an index every session's
    appends write: the store's); or an append queued behind a failed one of the same
    session, whatever failed it (it was not tried: its failure tells nothing of the
    store). Nothing of it was stored, and the store takes other sessions' appends as
    before: a server does not take it alone as an outage (``/readyz`` stays ready while
    other sessions' appends succeed). A failure of the store's (disk full, I/O error,
    store unreachable) is a plain StorageError."""


class StorageFull(StorageError):
    """The store holds its maximum number of sessions."""


class OwnerAtCap(StorageError):
    """A creation refused by a store that counts the sessions of the new session's
    user in the step that creates it (``OwnerCaps``): the user keeps ``count``
    sessions, not closed or, ``stored``, in all, and that is the cap."""

    def __init__(self, stored: bool, count: int) -> None:
        kind = "sessions in the store" if stored else "sessions not closed"
        super().__init__(f"the user keeps {count} {kind}")
        self.stored = stored
        self.count = count


class StorageLocked(StorageError):
    """Another process holds this store (an embedded store has one owner)."""


class StoreMisconfigured(StorageError):
    """The store's backend runs with settings this store refuses (a Redis that may lose
    writes it acknowledged, or too old for what its URL asks): opening it again fails
    the same way until its operator changes them, so a server exits as for a bad
    configuration (status 2), and ``serve --workers`` stops instead of restarting."""


class StoreTooNew(StoreMisconfigured):
    """The store holds a format newer than this version reads: a later version wrote
    it (a rollback past a format change, docs/upgrading.md). Refused before anything
    in it is read or changed; every open fails alike until a version that reads it
    runs, so a server exits as for a bad configuration (status 2)."""

    def __init__(self, where: str, found: int, known: int, what: str = "store format") -> None:
        super().__init__(
            f"{where} holds {what} {found}, newer than this bamboo-session reads "
            f"({known}): a newer version wrote it. Run that version or a later one, or "
            "restore a copy of the store taken before the upgrade (docs/upgrading.md); "
            "nothing in it was changed"
        )
        self.found = found
        self.known = known


class ListingTooLarge(StorageError):
    """A listing would hold more than its bound in memory while it is read (the Redis
    store's listings in steps: the page's candidates and a hash of each match): narrow
    the filter, or ask for a smaller ``offset``. Asked again as it is, it fails the
    same way while the store holds as many matches (HTTP 400)."""


class ListingChangedTooLarge(ListingTooLarge):
    """A listing that changed while it was read, read again holding every match, would
    hold more than its bound: asked again while its sessions change less, it may be
    served (HTTP 503)."""
