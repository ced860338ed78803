"""docs/protocol.md as a client author in another language reads it, against a real
server: the session in the ``welcome`` example shows every SessionMetadata field the
server sends, and the SessionMetadata table (whose fields are "always sent") lists
exactly those. A client written from the example alone then expects every field it
will meet."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support import attach, get, run_server

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_TABLE_FIELD = re.compile(r"^\| `([a-z_]+)` \|", re.MULTILINE)


def section(heading: str) -> str:
    """The text under ``heading`` (a whole line of the page), up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = text.find("\n#", start)
    return text[start : end if end >= 0 else len(text)]


async def test_the_welcome_example_and_the_metadata_table_name_what_a_server_sends() -> None:
    example = json.loads(_JSON_BLOCK.findall(section("### `welcome`"))[0])
    table = _TABLE_FIELD.findall(section("### SessionMetadata"))
    async with run_server() as server, attach(server, user_id="u1", title="T") as (_, welcome):
        sent = set(welcome["session"])
    assert sorted(example["session"]) == sorted(sent)
    assert sorted(table) == sorted(sent) and len(table) == len(set(table))


_TABLE_ROW = re.compile(r"^\| (`bamboo_[^|]*) \| (\w+) \|", re.MULTILINE)
_METRIC = re.compile(r"`(bamboo_[a-z_]+)")
_EXPORTED = re.compile(r"^# TYPE (bamboo_[a-z_]+) (\w+)$", re.MULTILINE)


async def test_the_metrics_table_names_every_metric_a_server_exports_with_its_type() -> None:
    documented = {
        name: kind
        for names, kind in _TABLE_ROW.findall(section("### Metrics"))
        for name in _METRIC.findall(names)
    }
    async with run_server() as server:
        status, text = await get(server, "/metrics")
    assert status == 200, text
    exported = dict(_EXPORTED.findall(text))
    # Each counter's `_created` gauge, which the section's text names once for all.
    created = {name for name in exported if name.endswith("_created")}
    assert {name.removesuffix("_created") + "_total" for name in created} <= set(documented)
    assert all(exported[name] == "gauge" for name in created)
    assert {name: exported[name] for name in set(exported) - created} == documented
