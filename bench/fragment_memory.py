"""How much memory do peers holding messages of tiny fragments take from a server?

Each peer attaches, then sends the start of a text message and ``--fragments - 1``
continuation fragments of ``--payload`` bytes, never the last: websockets holds every
fragment until the message ends, some 176 bytes each whatever its payload, for 6 bytes
of the peer's. The server's share of ``--memory-budget`` for frames arriving (a
sixteenth: 16 MiB by default) is meant to bound what they hold (arriving_frames.py).
The peers stay until the server closes them, or ``--hold`` seconds after their last
byte.

Printed: the server's RSS before, its peak (VmHWM) while the peers held, how each peer
ended, and the RATIO of the peak's growth to the share.

    nice .venv/bin/python -m bench.fragment_memory --peers 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import struct
import time

from bench.common import HOST, bamboo_server, gather_bounded, ratio_line, rss_kib, run, workdir

SHARE_KIB = 256 * 1024 // 16  # the default --memory-budget's sixteenth


def peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def masked(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A client's frame (payloads under 126 bytes): masked with zeros, as any mask is."""
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


async def peer(port: int, index: int, args: argparse.Namespace) -> str:
    """One peer's message of fragments; how it ended."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /api/v1/stream/frag-{index % 100} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        writer.write(masked(0x1, b'{"type": "hello", "create": true}', True))
        head = await reader.readexactly(2)
        size = head[1] & 0x7F
        size = struct.unpack("!H", await reader.readexactly(2))[0] if size == 126 else size
        await reader.readexactly(size)  # the welcome
        fragment = masked(0x0, b"a" * args.payload, False)
        writer.write(masked(0x1, b'{"type": "ping", "x": "', False))
        writer.write(fragment * (args.fragments - 1))
        await writer.drain()
        try:
            while True:  # presence frames, then the close, if any
                head = await asyncio.wait_for(reader.readexactly(2), args.hold)
                size = head[1] & 0x7F
                if size == 126:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
                if head[0] & 0x0F == 0x8:
                    return f"closed {struct.unpack('!H', data[:2])[0]} {data[2:].decode()}"
        except TimeoutError:
            return "held"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "dropped"
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    with workdir("fragments") as tmp:
        server = bamboo_server(tmp / "data", tmp / "server.log", "--durability", "os")
        server.start()
        try:
            before = rss_kib(server.pid)
            started = time.monotonic()
            peers = [peer(server.port, index, args) for index in range(args.peers)]
            ends = await gather_bounded(peers, 500)
            seconds = time.monotonic() - started
            peak = peak_kib(server.pid)
        finally:
            server.terminate()
    print(f"{args.peers} peers, {args.fragments} fragments of {args.payload} B, {seconds:.1f} s")
    print(f"server RSS before {before // 1024} MiB, peak {peak // 1024} MiB")
    for end, count in collections.Counter(ends).most_common():
        print(f"  {count} {end}")
    growth = (peak - before) / SHARE_KIB
    print(ratio_line("fragment_memory", "peak_growth_per_share", growth, "about 1 or less"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=300)
    parser.add_argument("--fragments", type=int, default=4095, help="at most 4,096")
    parser.add_argument("--payload", type=int, default=1, help="bytes a fragment (< 126)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds, after the last")
    run(main(parser.parse_args()))
