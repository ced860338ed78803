"""The WAL's sync helper: a small child process that runs ``fdatasync`` for the log
writer (``syncer.py`` starts it and talks to it).

Run by path, not as a module, so that it imports the standard library only:
``python -I -S sync_helper.py FD``, where FD is its end of a ``SOCK_SEQPACKET`` socket pair.
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

import contextlib
import os
import signal
import socket
import sys


def serve(channel: socket.socket) -> None:
    current = -1
    while True:
        request, fds, flags, _address = socket.recv_fds(channel, 16, 1)
        if not request:
            return
        if request == b"F":
            if len(fds) != 1 or flags & socket.MSG_CTRUNC:
                return
            if current >= 0:
                os.close(current)
            current = fds[0]
        elif request == b"S":
            error = 0
            try:
                os.fdatasync(current)
            except OSError as exc:
                error = exc.errno or 5  # EIO when the error has no number
            channel.send(error.to_bytes(4, "little"))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=int(sys.argv[1])) as channel, contextlib.suppress(ConnectionError):
        serve(channel)
