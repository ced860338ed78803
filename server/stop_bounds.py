"""The bounds of a graceful stop, for a disk that stops answering (an NFS mount gone, a
dying drive: an ``fsync`` that never returns), and the exit status of ``serve``'s stop.

The JSONL store acknowledges an append only once its sync is known, and waits for that
through any cancellation (persistence/jsonl/tasks.py ``to_completion``): its close
would wait for ever on a sync that never ends. So the stop does not wait for the
store's close past ``--store-close-timeout``: it logs what the store still owes its
disk (``DiskDebt``: appends taken and not acknowledged, and the step they wait on)
and goes on; ``serve`` then exits with ``STORE_UNFINISHED``. Nothing is claimed
durable that was not: those appends were never acknowledged (their peers got 1012
and no ack), and every acknowledged one was synced before its ack.

Each phase of the stop has its bound (``--shutdown-grace`` for the connections and
sessions, about a second for the park, ``--store-close-timeout`` for the store);
``stop_bound`` adds them up, with some slack, as a last bound on the whole, which
``exit_status_of_stop`` holds a stop to whatever keeps it (a thread of the store stuck
in a system call). A second SIGTERM or SIGINT during the stop ends it at once,
status 128 + the signal's number: what that leaves is in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

import structlog

from bamboo_session.persistence.base import Storage
from bamboo_session.persistence.capabilities import OwesTheDisk
from bamboo_session.tasks import ended_within

from .restart_park import STOP_BOUND

if TYPE_CHECKING:
    from .app import BambooServer
    from .config import ServerConfig

log = structlog.get_logger("bamboo_session.server")

STORE_UNFINISHED = 1  # serve's exit status when the store could not finish its close
# The phases of a stop, in order, as the log names them (``phase``, and the debug line
# ``stop phase`` as each begins) and docs/operations.md lists them with their bounds.
CLOSING_THE_SESSIONS = "closing the sessions"
PARKING = "parking the sessions left attached"
DELIVERING = "delivering the peers' last bytes"
ENDING_THE_BACKGROUND = "ending the background work"
CLOSING_THE_STORE = "closing the store"
SLACK = 5.0  # seconds the stop's other steps (and a loaded machine) get on top
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def disk_debt(storage: Storage | None) -> dict[str, object]:
    """What ``storage`` still owes its disk, as log fields (none for a store that
    cannot say)."""
    if storage is None:  # (first: mypy narrows no ``Storage | None`` to a protocol)
        return {}
    return storage.disk_debt().fields() if isinstance(storage, OwesTheDisk) else {}


async def close_store_within(storage: Storage, seconds: float) -> bool:
    """Closes ``storage``, waiting ``seconds`` at most: whether it closed. A close past
    that is left to go on (it may never end), and the log names what it still owed."""
    closing = asyncio.ensure_future(storage.close())
    if not await ended_within(closing, seconds):
        log.error(
            "the store did not close in time: appends still owed to the disk stay "
            "unacknowledged (their peers got 1012), and the next start recovers the rest",
            seconds=seconds,
            **disk_debt(storage),
        )
        return False
    if closing.cancelled():
        raise asyncio.CancelledError
    if (error := closing.exception()) is not None:
        log.error("the store could not close", error=repr(error), **disk_debt(storage))
        return False
    return True


def stop_bound(config: ServerConfig) -> float:
    """Seconds a stop of ``serve`` may take at most, whatever hangs: its phases'
    bounds (the connections and sessions, their last bytes and the user counts,
    each ``--shutdown-grace``; the park; the store's close), and ``SLACK``."""
    return 3 * config.shutdown_grace + STOP_BOUND + config.store_close_timeout + SLACK


async def exit_status_of_stop(
    server: BambooServer, config: ServerConfig, *, second_signal_ends: bool = True
) -> int:
    """Stops ``server`` for ``serve``'s exit, within :func:`stop_bound`; a second
    SIGTERM or SIGINT ends the wait at once, unless not ``second_signal_ends`` (a
    worker of ``--workers``: a Ctrl-C reaches it from the terminal and again from its
    supervisor, which kills it at a second signal of its own). The exit status: 0 when
    the store closed, ``STORE_UNFINISHED`` when it did not (or the stop did not end in
    its bound), 128 + the signal's number after a second signal."""
    loop = asyncio.get_running_loop()
    second: asyncio.Future[int] = loop.create_future()
    for signum in STOP_SIGNALS:
        if second_signal_ends:
            loop.add_signal_handler(signum, _first_only, second, int(signum))
        else:
            loop.add_signal_handler(signum, _ignored)
    stopping = asyncio.ensure_future(server.stop(exiting=True))
    bound = stop_bound(config)
    either: set[asyncio.Future[Any]] = {stopping, second}
    await asyncio.wait(either, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
    if stopping.done():
        if (error := stopping.exception()) is not None:
            log.error("the stop failed", error=repr(error), exc_info=error)
            return STORE_UNFINISHED
        return 0 if server.store_closed else STORE_UNFINISHED
    fields = {"phase": server.stop_phase, **disk_debt(server.storage)}
    if second.done():
        number = second.result()
        log.warning(
            "a second signal: stopping at once; the store is not closed (the next start "
            "recovers it), and appends still owed to the disk stay unacknowledged",
            signal=signal.Signals(number).name,
            **fields,
        )
        return 128 + number
    log.error(
        "the stop did not end in time: exiting with it unfinished; appends still owed "
        "to the disk stay unacknowledged, and the next start recovers the store",
        seconds=bound,
        **fields,
    )
    return STORE_UNFINISHED


def _first_only(second: asyncio.Future[int], signum: int) -> None:
    if not second.done():
        second.set_result(signum)


def _ignored() -> None:
    """A signal that changes nothing (the stop is under way already)."""
