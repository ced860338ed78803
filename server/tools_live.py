"""``tail`` and ``publish``: a running server's sessions over its WebSocket API, with the
reference client (which resumes on its own). The client (websockets) is imported when
one of them runs, not when the command line is parsed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from bamboo_session.protocol.models import AnyAgentEvent

from .tools import ToolError, fail, non_negative, positive, runner, session_id_argument
from .tools_store import add_online, ws_base

if TYPE_CHECKING:
    from bamboo_session.protocol.client import BambooClient

    from .tools import SubParsers

LiveCommand = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

_encoder = msgspec.json.Encoder()


def add_tail(commands: SubParsers) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow a session's events live",
        description="Print a session's events as they happen, one JSON object per line, "
        "reconnecting and resuming on its own. Stops when the session is closed.",
    )
    tail.add_argument("session_id", metavar="ID", type=session_id_argument, help="session id")
    add_online(tail)
    tail.add_argument(
        "--from-seq",
        type=non_negative,
        default=None,
        help="first print the events after this seq (0: the whole log); default: live only",
    )
    tail.add_argument("--count", type=positive, default=None, help="stop after this many events")
    tail.set_defaults(run=runner(_client_failures_said(_tail)))


def add_publish(commands: SubParsers) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish one event",
        description="Append one AgentEvent to a session and print its seq.",
    )
    publish.add_argument("session_id", metavar="ID", type=session_id_argument, help="session id")
    publish.add_argument(
        "--event",
        required=True,
        help='the AgentEvent as JSON, e.g. \'{"type": "token", "content": "Hi"}\'',
    )
    publish.add_argument(
        "--key", default=None, help="idempotency key: the same key again appends nothing"
    )
    publish.add_argument(
        "--create", action="store_true", help="create the session if it does not exist"
    )
    add_online(publish)
    publish.set_defaults(run=runner(_client_failures_said(_publish)))


def _client_failures_said(command: LiveCommand) -> LiveCommand:
    """``command``, its client's failures (ClientError) said as one line, as a ToolError."""

    async def run(args: argparse.Namespace) -> int:
        from bamboo_session.protocol.client import ClientError

        try:
            return await command(args)
        except ClientError as exc:
            raise ToolError(str(exc)) from None

    return run


async def _connect(args: argparse.Namespace, **options: Any) -> BambooClient:
    from bamboo_session.protocol.client import BambooClient

    url = ws_base(args.url)
    try:
        return await BambooClient.connect(url, args.session_id, token=args.token, **options)
    except TimeoutError:
        raise ToolError(f"cannot connect to {url}: timed out") from None
    except OSError as exc:
        raise ToolError(f"cannot connect to {url}: {exc.strerror or exc}") from None


async def _tail(args: argparse.Namespace) -> int:
    from bamboo_session.protocol.client import Reset

    client = await _connect(args, last_seq=args.from_seq)
    printed = 0
    async with client:
        async for item in client.events():
            if isinstance(item, Reset):
                fail(
                    f"could not resume after seq {item.previous_last_seq}; "
                    f"continuing live after seq {item.last_seq}"
                )
                continue
            line = {"seq": item.seq, "ts": item.ts, "event": item.event}
            sys.stdout.write(_encoder.encode(line).decode() + "\n")
            sys.stdout.flush()
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    return 0


async def _publish(args: argparse.Namespace) -> int:
    try:
        event = msgspec.json.decode(args.event, type=AnyAgentEvent)
    except msgspec.DecodeError as exc:
        raise ToolError(f"--event is not a valid AgentEvent: {exc}") from None
    client = await _connect(
        args,
        create=args.create,
        role="agent",
        max_retries=3,
        request_timeout=30,
        receive_events=False,
    )
    async with client:
        print(await client.publish(event, key=args.key))
    return 0
