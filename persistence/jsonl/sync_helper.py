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


def receive(channel: socket) -> tuple[bytes, list[int], int]:
    """One request: its bytes, the descriptors that came with it, its flags."""
    request, ancillary, flags, _address = channel.recvmsg(16, CMSG_LEN(FD_BYTES))
    fds = []
    for level, kind, data in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            whole = len(data) - len(data) % FD_BYTES
            for at in range(0, whole, FD_BYTES):
                fds.append(int.from_bytes(data[at : at + FD_BYTES], sys.byteorder, signed=True))
    return request, fds, flags


def serve(channel: socket) -> None:
    current = -1
    while True:
        request, fds, flags = receive(channel)
        if not request:
            return
        if request == b"F":
            if len(fds) != 1 or flags & MSG_CTRUNC:
                return
            if current >= 0:
                posix.close(current)
            current = fds[0]
        elif request == b"S":
            error = 0
            try:
                posix.fdatasync(current)
            except OSError as exc:
                error = exc.errno or 5  # EIO when the error has no number
            channel.send(error.to_bytes(4, "little"))


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
