"""How long server/terminal_text.py takes over a text of 1 MiB characters that is all
escapes (the worst case: a substitution per character) against one with nothing to
escape, measured in the same invocation: the console log runs ``controls_shown`` on
every line's text fields, and the CLI ``shown`` on every title and message.

    python -m bench.terminal_text_speed
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from bamboo_session.server.terminal_text import controls_shown, json_shown, shown

SIZE = 1 << 20
TEXTS = {
    "ascii (baseline)": "a" * SIZE,
    "zero-width spaces": "\u200b" * SIZE,
    "ESC [": "\x1b[" * (SIZE // 2),
    "emoji and ZWJ": "\U0001f469\u200d" * (SIZE // 2),
    "backslash escapes typed": "\\u200b" * (SIZE // 6),
}


def best_of_three(call: Callable[..., object], argument: object) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        call(argument)
        times.append(time.perf_counter() - started)
    return min(times)


def logged(text: str) -> object:
    return controls_shown(None, "", {"t": text})


def main() -> None:
    baseline: dict[str, float] = {}
    for name, text in TEXTS.items():
        encoded = msgspec.json.encode(text)
        took = {
            "shown": best_of_three(shown, text),
            "controls_shown": best_of_three(logged, text),
            "json_shown": best_of_three(json_shown, encoded),
        }
        baseline = baseline or took
        cells = "  ".join(
            f"{how} {seconds:.3f} s ({seconds / baseline[how]:.1f}x)"
            for how, seconds in took.items()
        )
        print(f"{name:24} {cells}")


if __name__ == "__main__":
    main()
