"""A fenced lease in Redis: at most one holder at a time runs a job (the store's
cleanup), however many instances share the store. The seed's "distributed lock".

- :meth:`Lease.acquire` sets the lease key only if it is absent (``SET NX PX``), with
  a token that starts with a fencing number, taken from a counter that only grows.
- :meth:`Lease.renew` extends the expiry, and :meth:`Lease.release` deletes the key,
  each only while the key still holds this holder's token: a holder whose lease
  expired cannot extend or free the next holder's.
- Fencing: a holder that stalled (a long GC pause, a frozen VM) may still believe it
  holds the lease after it expired and another took it. So the work itself is fenced:
  every script that acts under the lease is given the lease key and the token, and
  checks ``GET key == token`` inside Redis, atomically with what it does
  (``delete.lua``). A stale holder's call is refused with :class:`Fenced`.
- Every grant, renewal and release is appended to a capped stream beside the key
  (``<key>:log``), so that tests (and an operator) can check that no two holders
  overlapped.

Keys: ``<prefix>:{lease:<name>}``, ``...:fence`` (the counter) and ``...:log``, under
one hash tag, so the lease's scripts work on a Cluster too.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

import redis.exceptions
from redis.asyncio import Redis

from .pool import attempt, read
from .scripts import Fenced, unreachable

__all__ = ["Fenced", "Lease", "LeaseRecord"]

LOG_LENGTH: Final = 1000

_ACQUIRE = b"""
-- KEYS: lease, fence counter, log; ARGV: holder, ttl ms, random part, log length
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
local token = fence .. ':' .. ARGV[1] .. ':' .. ARGV[3]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'op', 'grant', 'token', token,
           'ttl', ARGV[2])
return token
"""

_RENEW = b"""
-- KEYS: lease, log; ARGV: token, ttl ms, log length
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'op', 'renew', 'token', ARGV[1],
           'ttl', ARGV[2])
return 1
"""

_RELEASE = b"""
-- KEYS: lease, log; ARGV: token, log length
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'op', 'release', 'token', ARGV[1],
           'ttl', 0)
return 1
"""


class LeaseRecord:
    """One line of a lease's log: when (Redis time, ms), what, by which token."""

    __slots__ = ("at_ms", "fence", "op", "token", "ttl_ms")

    def __init__(self, at_ms: int, op: str, token: str, ttl_ms: int) -> None:
        self.at_ms = at_ms
        self.op = op
        self.token = token
        self.fence = int(token.partition(":")[0])
        self.ttl_ms = ttl_ms

    def __repr__(self) -> str:
        return f"LeaseRecord({self.at_ms}, {self.op!r}, {self.token!r}, {self.ttl_ms})"


class Lease:
    """One holder's handle on the lease ``key`` (see the module docstring)."""

    def __init__(self, client: Redis, key: str, holder: str, ttl: float) -> None:
        if ":" in holder:
            raise ValueError("a lease holder's name has no ':'")
        self._client = client
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self.token: str | None = None
        self._valid_until = 0.0  # monotonic: when this holder stops counting on it

    @property
    def fence(self) -> int | None:
        """The fencing number of the current grant (grows with every grant)."""
        return None if self.token is None else int(self.token.partition(":")[0])

    @property
    def held(self) -> bool:
        """Whether this holder may count on the lease now, by its own clock. Work that
        must not overlap still goes through :meth:`fence_args`: Redis has the last word."""
        return self.token is not None and time.monotonic() < self._valid_until

    def fence_args(self) -> tuple[str, str]:
        """``(lease key, token)`` for a fenced script; Fenced if nothing is held."""
        if self.token is None:
            raise Fenced(f"lease {self.key!r} is not held by {self.holder!r}")
        return self.key, self.token

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this holder has it now."""
        started = time.monotonic()
        token = await self._eval(
            _ACQUIRE,
            [self.key, f"{self.key}:fence", f"{self.key}:log"],
            [self.holder, self._ttl_ms(), secrets.token_hex(8), LOG_LENGTH],
        )
        if not isinstance(token, bytes):
            return False
        self.token = token.decode()
        self._valid_until = started + self.ttl
        return True

    async def renew(self) -> bool:
        """Extend the lease if it is still this holder's; False (and let go) if not."""
        if self.token is None:
            return False
        started = time.monotonic()
        renewed = await self._eval(
            _RENEW, [self.key, f"{self.key}:log"], [self.token, self._ttl_ms(), LOG_LENGTH]
        )
        if renewed:
            self._valid_until = started + self.ttl
            return True
        self.token = None
        return False

    async def keep(self) -> bool:
        """Renew if held, else try to acquire: what a holder's loop calls every
        ``ttl / 3`` seconds. True if this holder has the lease now."""
        if self.token is not None and await self.renew():
            return True
        return await self.acquire()

    async def release(self) -> bool:
        """Give the lease up if it is still this holder's."""
        token, self.token = self.token, None
        if token is None:
            return False
        return bool(await self._eval(_RELEASE, [self.key, f"{self.key}:log"], [token, LOG_LENGTH]))

    async def records(self) -> list[LeaseRecord]:
        """The lease's log, oldest first (the last ``LOG_LENGTH`` or so)."""
        try:
            entries = await read(self._client, "XRANGE", f"{self.key}:log", "-", "+")
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc
        records = []
        for entry_id, fields in entries:  # redis-py makes a dict of each entry's fields
            records.append(
                LeaseRecord(
                    int(entry_id.partition(b"-")[0]),
                    fields[b"op"].decode(),
                    fields[b"token"].decode(),
                    int(fields[b"ttl"]),
                )
            )
        return records

    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def _eval(self, script: bytes, keys: list[str], args: list[str | int]) -> object:
        try:
            command = ("EVAL", script, len(keys), *keys, *args)
            return await attempt(
                self._client, lambda: self._client.execute_command(*command), only_reads=False
            )
        except redis.exceptions.RedisError as exc:
            raise unreachable(exc) from exc
