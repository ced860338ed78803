"""The WAL's sync helper: a small child process that runs ``fdatasync`` for the log
writer (``syncer.py`` starts it and talks to it).

Run by path, not as a module, so that it imports the standard library only:
``python -I -S sync_helper.py FD``, where FD is its end of a ``SOCK_SEQPACKET`` socket pair.
It imports only C modules (``posix``, ``_socket``, ``_signal``), none of the Python
code around them: every store opened with the WAL starts one, and ``socket``,
``signal`` and ``contextlib`` (which pull in ``enum``, ``functools`` and more) made its
start cost about 33 ms of CPU, and ``os`` (not loaded at start under ``-S``) 2 to 3 ms
more than the bare interpreter, which is most of what is left.
Each message it reads is one request:

- ``F`` with a descriptor attached (``SCM_RIGHTS``): from now on, sync that file (the
  current WAL segment); the previous descriptor is closed. No answer. An ``F`` whose
  descriptor did not arrive (the helper out of descriptors: ``MSG_CTRUNC``) ends the
  helper: syncing the previous file instead would report unsynced records as synced.
- ``S``: ``fdatasync`` the current file; the answer is 4 bytes, the ``errno`` of the
  failure as a little-endian integer, or 0.

It exits at the end of the stream: when the server closes the storage, or dies. It
ignores SIGINT and SIGTERM once it runs: a Ctrl-C or a stop sent to the whole process
group must not take it away while the server shuts down gracefully and still syncs.
(One that comes in the few milliseconds before, or a SIGKILL, ends it: the writer then
syncs on its thread.)
"""

import posix
import sys
from _signal import SIG_IGN, SIGINT, SIGTERM, signal
from _socket import CMSG_LEN, MSG_CTRUNC, SCM_RIGHTS, SOL_SOCKET, socket

FD_BYTES = 4  # a C int, as SCM_RIGHTS carries descriptors


SYNCED = bytes(4)  # the answer to a sync that succeeded: errno 0


def descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors that came with a request (``SCM_RIGHTS``)."""
    fds = []
    for level, kind, data in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            whole = len(data) - len(data) % FD_BYTES
            for at in range(0, whole, FD_BYTES):
                fds.append(int.from_bytes(data[at : at + FD_BYTES], sys.byteorder, signed=True))
    return fds


def serve(channel: socket) -> None:
    # Each sync is a wake-up of this process: its loop is plain, its names local, the
    # common request ("S") first, its answer made once.
    current = -1
    receive, send, fdatasync = channel.recvmsg, channel.send, posix.fdatasync
    room = CMSG_LEN(FD_BYTES)
    while True:
        request, ancillary, flags, _address = receive(16, room)
        if request == b"S":
            try:
                fdatasync(current)
            except OSError as exc:
                send((exc.errno or 5).to_bytes(4, "little"))  # EIO when it has no number
            else:
                send(SYNCED)
        elif request == b"F":
            fds = descriptors(ancillary)
            if len(fds) != 1 or flags & MSG_CTRUNC:
                return
            if current >= 0:
                posix.close(current)
            current = fds[0]
        elif not request:
            return


if __name__ == "__main__":
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    channel = socket(fileno=int(sys.argv[1]))
    try:
        serve(channel)
    except ConnectionError:
        pass
    finally:
        channel.close()
