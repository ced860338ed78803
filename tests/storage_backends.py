"""The storage backends the contract suite runs on, each opened by URL on real files in
a temporary directory (or, for servers, a real server the fixture starts).

A backend joins the contract suite by adding a :class:`Backend` to ``BACKENDS``; it is
done when ``tests/test_storage_contract.py`` and ``tests/test_storage_model.py`` pass
on it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bamboo_session.persistence import Storage, open_storage


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    url: Callable[[Path], str]  # the store's URL, given a fresh temporary directory
    durable: bool = True  # whether a reopened store still holds what was acknowledged

    async def open(self, directory: Path, **options: Any) -> Storage:
        return await open_storage(self.url(directory), **options)


BACKENDS: list[Backend] = [
    Backend("memory", lambda _directory: "memory://", durable=False),
    Backend("jsonl", lambda directory: f"jsonl://{directory / 'store'}"),
    Backend("jsonl-os", lambda directory: f"jsonl://{directory / 'store'}?durability=os"),
    Backend("sqlite", lambda directory: f"sqlite://{directory / 'store.db'}"),
    Backend("sqlite-os", lambda directory: f"sqlite://{directory / 'store.db'}?durability=os"),
]
