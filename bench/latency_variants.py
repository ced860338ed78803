"""The latency bench (bench/latency.py) over variants of the JSONL store in one
invocation: each variant is its own Bamboo server, with its store's URL query and,
for an experiment built into a tree, environment variables of its own. The ratios
between store choices (commit windows, a switch under test) are then taken within one
invocation, as bench/RESULTS.md asks on this shared machine.

    python -m bench.latency_variants --variant w1=commit_window=0.001 \\
        --variant w2=commit_window=0.002 --variant x=+SOME_SWITCH=1 \\
        -- --rate 2000 --sessions 200 --seconds 10 --peers socketio --durability fsync w1 w2 x

A variant is ``NAME=QUERY`` with ``+VAR=VALUE`` parts after the query: the server runs
``--store jsonl://DATA?durability=fsync&QUERY`` with ``VAR=VALUE`` in its environment;
the query ``memory`` runs the memory store (``--store memory://``) instead, so that an
experiment on it gets its own environment too (``m=memory+SOME_SWITCH=1``).
Name the variants in ``--durability`` after ``--``, beside the usual ones (fsync,
memory, ...), in the order they are to run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import common, compare, latency


class Variant:
    """One variant: the store URL's query and the server's extra environment."""

    def __init__(self, spec: str) -> None:
        name, _, rest = spec.partition("=")
        query, *settings = rest.split("+")
        if not name or any("=" not in setting for setting in settings):
            raise SystemExit(f"--variant {spec!r}: NAME=QUERY[+VAR=VALUE...]")
        self.name, self.query = name, query
        self.env = dict(setting.split("=", 1) for setting in settings)

    def store_flags(self, data: Path) -> list[str]:
        if self.query == "memory":
            return ["--store", "memory://"]
        query = "durability=fsync" + (f"&{self.query}" if self.query else "")
        return ["--store", f"jsonl://{data}?{query}"]


def install(variants: dict[str, Variant]) -> None:
    """The variants made known to the line-up (bench/compare.py) as durabilities."""
    compare.DURABILITIES = compare.DURABILITIES + tuple(variants)
    store_flags, server = compare.store_flags, compare.server

    def variant_flags(durability: str, data: Path) -> list[str]:
        variant = variants.get(durability)
        return variant.store_flags(data) if variant else store_flags(durability, data)

    def variant_server(kind: str, tmp: Path) -> common.ServerProcess:
        process = server(kind, tmp)
        variant = variants.get(kind.removeprefix(compare.BAMBOO))
        if variant is not None and variant.env:
            process.env = {**os.environ, **variant.env}
        return process

    compare.store_flags, compare.server = variant_flags, variant_server


def parse_args(argv: list[str]) -> tuple[dict[str, Variant], argparse.Namespace]:
    ours, theirs = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME=QUERY[+VAR=VALUE...]")
    variants = {v.name: v for v in map(Variant, parser.parse_args(ours).variant)}
    install(variants)
    return variants, latency.parse_args(theirs)


def main(argv: list[str]) -> dict[str, Any]:
    _variants, args = parse_args(argv)
    result = common.run(latency.main(args))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
