"""What every atheris harness of tests/fuzz shares: its seed corpus and its run.

Each ``fuzz_*.py`` beside this file is a script, run as ``python tests/fuzz/fuzz_x.py
[libFuzzer options] [corpus dirs]`` (``make fuzz`` runs them all for ``FUZZ_SECONDS``
each). pytest never collects them (tests/conftest.py ignores this directory): they need
atheris, which only ``make fuzz`` installs, and they run until a time bound, not a test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]


def run(
    name: str,
    one_input: Callable[[bytes], None],
    seeds: Iterable[bytes],
    tokens: Iterable[str] = (),
) -> None:
    """Fuzz ``one_input`` with libFuzzer's options from the command line; without
    a corpus directory there, ``build/fuzz/<name>``, seeded with ``seeds``, and
    ``tokens`` as a dictionary. Both matter: msgspec's parsers are C, which atheris
    does not see, so the fuzzer learns their grammar only from valid inputs, the words
    of the protocol, and what the Python around them does."""
    args = sys.argv[1:]
    base = ROOT / "build" / "fuzz"
    if not any(not arg.startswith("-") for arg in args):
        corpus = base / name
        corpus.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(seeds):
            (corpus / f"seed-{index:03}").write_bytes(seed)
        args.append(str(corpus))
    tokens = list(tokens)
    if tokens and not any(arg.startswith("-dict=") for arg in args):
        dictionary = base / f"{name}.dict"
        dictionary.write_text("".join(f'"{_escaped(token)}"\n' for token in tokens))
        args.insert(0, f"-dict={dictionary}")
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


def _escaped(token: str) -> str:
    """``token`` as a libFuzzer dictionary spells it: ``\\xNN`` for other than
    printable ASCII, ``\\\\`` and ``\\"``."""
    return "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02X}"
        for byte in token.encode()
    )
