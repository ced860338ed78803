"""The line-up of the comparative benches (throughput, latency): which peers run beside
Bamboo, their servers, and the ratios between them.

Kinds, in the order they are measured: ``relay`` (bench/baseline_relay.py), ``socketio``
(bench/socketio/, skipped with one line where node is missing), then ``bamboo-fsync``,
``bamboo-os``, ... one Bamboo server per ``--durability`` given (fsync and os by
default, so the price of the disk shows). Where a bench offers batches (throughput),
``fsync-batch`` (``os-batch``, ...) is that server again, its own process and data,
whose agents publish in ``batch`` frames (docs/protocol.md, "Extension: batch
publish"). Every ratio is taken between runs of one
invocation, since absolute figures drift on a shared machine.

``BENCH_BEFORE=/path/to/an/older/checkout`` adds ``before``, after the peers: that
tree's Bamboo server (fsync, its own flags), to show that a change did not cost speed
(``git worktree add /tmp/before <commit>``); ``BENCH_BEFORE_DURABILITY`` runs it with
another durability (``memory``: beside ``--durability memory``, what a change costs
the serving path without a disk). Its drivers are this tree's: the wire
protocol is the same. Where a ``-batch`` durability is measured, ``before-batch`` is
that older server again, with agents that publish in batch frames.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import common, socketio_peer

RELAY = "relay"
SOCKETIO = socketio_peer.KIND
PEERS = (RELAY, SOCKETIO)
BAMBOO = "bamboo-"
BEFORE = "before"
BEFORE_TREE_ENV = "BENCH_BEFORE"
BEFORE_DURABILITY_ENV = "BENCH_BEFORE_DURABILITY"  # fsync unless it says otherwise
# Runs the older tree's server from a package of symlinks (as pyproject's package-dir
# maps them), found by a finder put ahead of every other: first on sys.path was not
# enough, a finder of bamboo_session in sys.meta_path (a sitecustomize's that maps it to
# a worktree, inherited through PYTHONPATH) ran this tree's server as ``before`` too.
# OLDER_TREE: the finder, from the package given as the child's first argument (popped).
OLDER_TREE = """
import sys
from importlib.machinery import PathFinder
root = sys.argv.pop(1)
class OlderTree:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "bamboo_session":
            return PathFinder.find_spec(name, [root])
        if name.startswith("bamboo_session."):
            return PathFinder.find_spec(name, path)
        return None
sys.meta_path.insert(0, OlderTree)
"""
_RUN_SERVER = """
import runpy
runpy.run_module("bamboo_session.server", run_name="__main__", alter_sys=True)
"""
BEFORE_BOOT = OLDER_TREE + _RUN_SERVER


# Seconds: the JSONL store's commit_window for fsync-window (BENCH_WINDOW sets another).
COMMIT_WINDOW = float(os.environ.get("BENCH_WINDOW", "0.002"))
DURABILITIES: tuple[str, ...] = ("fsync", "fsync-window", "os", "memory")
BATCH = "-batch"  # a durability with this suffix: its agents send batch frames


def add_args(parser: argparse.ArgumentParser, batches: bool = False) -> None:
    """The line-up's flags; with ``batches``, the ``-batch`` variants too (and
    ``--batch``, which adds one for each ``--durability``)."""
    choices = DURABILITIES + (tuple(d + BATCH for d in DURABILITIES) if batches else ())
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="what Bamboo is compared with (default: both); the relay gives the goal ratio",
    )
    parser.add_argument(
        "--durability",
        nargs="+",
        choices=choices,
        default=["fsync", "os"],
        help="Bamboo's durability, one server each (the goal is for the first: fsync); "
        f"fsync-window: fsync with a {COMMIT_WINDOW * 1000:g} ms commit window; "
        "memory: the in-memory store (memory://)"
        + ("; with -batch (fsync-batch): agents publish in batch frames" if batches else ""),
    )
    if batches:
        parser.add_argument(
            "--batch",
            action="store_true",
            help="also measure each --durability with agents that publish in batch frames",
        )


def kinds(args: argparse.Namespace) -> list[str]:
    """What this invocation measures; prints the one skip line if Socket.IO cannot run."""
    lineup = [RELAY] if RELAY in args.peers else []
    if SOCKETIO in args.peers:
        skipped = socketio_peer.skip_line()
        if skipped is None:
            lineup.append(SOCKETIO)
        else:
            print(skipped, flush=True)
    durabilities = list(args.durability)
    if getattr(args, "batch", False):
        durabilities += [d + BATCH for d in args.durability if not d.endswith(BATCH)]
    if os.environ.get(BEFORE_TREE_ENV):
        lineup.append(BEFORE)
        if any(d.endswith(BATCH) for d in durabilities):
            lineup.append(BEFORE + BATCH)
    return lineup + [BAMBOO + d for d in dict.fromkeys(durabilities)]


def is_bamboo(kind: str) -> bool:
    return kind.startswith(BAMBOO)


def batches(kind: str) -> bool:
    """Whether ``kind``'s agents publish in batch frames."""
    return speaks_bamboo(kind) and kind.endswith(BATCH)


def speaks_bamboo(kind: str) -> bool:
    """Whether the Bamboo drivers run against ``kind``: this tree's or an older one's."""
    return is_bamboo(kind) or kind.removesuffix(BATCH) == BEFORE


def server(kind: str, tmp: Path) -> common.ServerProcess:
    if kind == RELAY:
        return common.baseline_server(tmp / "relay.log")
    if kind == SOCKETIO:
        return socketio_peer.server(tmp / "socketio.log")
    if kind.removesuffix(BATCH) == BEFORE:
        return before_server(kind, Path(os.environ[BEFORE_TREE_ENV]), tmp)
    label = kind.removeprefix(BAMBOO)  # each server its own data
    data, log = tmp / f"data-{label}", tmp / f"{kind}.log"
    return common.bamboo_server(data, log, *store_flags(label.removesuffix(BATCH), data))


def store_flags(durability: str, data: Path) -> list[str]:
    """The flags of a Bamboo server of ``durability`` (DURABILITIES) on ``data``."""
    if durability == "memory":  # the in-memory store: what Bamboo costs without a disk
        return ["--store", "memory://"]
    if durability == "fsync-window":  # lone events wait a little to share an fsync
        return ["--store", f"jsonl://{data}?commit_window={COMMIT_WINDOW}"]
    return ["--durability", durability]


def before_server(kind: str, tree: Path, tmp: Path, *extra: str) -> common.ServerProcess:
    """The server of an older checkout at ``tree``, fsync (or BENCH_BEFORE_DURABILITY),
    with the flags it had and ``extra`` (later flags win: ``--data-dir`` for another data
    directory)."""
    argv = [sys.executable, "-c", BEFORE_BOOT, str(older_package(tree, tmp / kind)), "serve"]
    data = tmp / f"data-{kind}"
    durability = os.environ.get(BEFORE_DURABILITY_ENV, "fsync")
    if durability not in DURABILITIES:
        raise SystemExit(f"{BEFORE_DURABILITY_ENV}={durability}: not one of {DURABILITIES}")
    argv += ["--host", common.HOST, "--port", "{port}", "--data-dir", str(data)]
    argv += [*store_flags(durability, data), "--log-format", "json", "--log-level", "warning"]
    argv += ["--max-sessions", "1000000", *extra]
    return common.ServerProcess(kind, argv, tmp / f"{kind}.log")


def older_package(tree: Path, place: Path) -> Path:
    """A folder at ``place`` holding ``bamboo_session`` as the checkout at ``tree`` has
    it, for BEFORE_BOOT: its root modules copied, its packages symlinked."""
    package = place.with_name(f"{place.name}-package") / "bamboo_session"
    package.mkdir(parents=True)
    for module in (tree / "bamboo_session").glob("*.py"):  # the root's (wakeup.py since 2f93b72)
        (package / module.name).write_bytes(module.read_bytes())
    for folder in ("protocol", "persistence", "server"):
        (package / folder).symlink_to(tree.resolve() / folder)
    return package.parent


def pairs(lineup: Sequence[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) of every comparison: each Bamboo against each peer, and
    Socket.IO against the relay."""
    peers = [k for k in lineup if not is_bamboo(k)]
    found = [(b, p) for b in lineup if is_bamboo(b) for p in peers]
    if RELAY in lineup and SOCKETIO in lineup:
        found.append((SOCKETIO, RELAY))
    return found


def ratio(values: dict[str, float], pair: tuple[str, str]) -> float:
    return values[pair[0]] / max(values[pair[1]], 1e-9)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def versus(values: dict[str, float], kind: str, peer: str, fmt: Callable[[float], str]) -> str:
    """``kind``'s value over ``peer``'s, or "-" where one of them did not run."""
    if peer not in values or kind not in values:
        return "-"
    return fmt(values[kind] / max(values[peer], 1e-9))
