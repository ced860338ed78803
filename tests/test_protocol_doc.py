"""docs/protocol.md as a client author in another language reads it, against a real
server: the session in the ``welcome`` example shows every SessionMetadata field the
server sends, and the SessionMetadata table (whose fields are "always sent") lists
exactly those. A client written from the example alone then expects every field it
will meet. The Metrics table names every metric ``/metrics`` serves, with its type, the
Limits table gives each flag it names the default the server has, the Error codes and
Close codes tables list exactly the codes of protocol/errors.py (the close table's last
column being ``CloseCode.should_resume``), and every close reason it quotes is one the
server's code holds."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from bamboo_session.protocol.errors import CloseCode, ErrorCode
from bamboo_session.server.config import FIELD_NAMES, ServerConfig
from bamboo_session.server.limits import DEFAULT_MAX_CONNECTIONS
from tests.support import attach, get, run_server

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_TABLE_FIELD = re.compile(r"^\| `([a-z_]+)` \|", re.MULTILINE)


def section(heading: str) -> str:
    """The text under ``heading`` (a whole line of the page), up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    found = text.find(f"\n{heading}\n")
    assert found >= 0, f"docs/protocol.md has no heading {heading!r}: this test reads it"
    start = found + len(heading) + 2
    end = text.find("\n#", start)
    return text[start : end if end >= 0 else len(text)]


def table_of(heading: str, columns: str) -> str:
    """The section under ``heading``, which must hold a table of ``columns`` (its
    header row, as ``| a | b |``): a test that reads the table's rows by position
    says so when its layout changes, rather than finding nothing or the wrong cells."""
    text = section(heading)
    assert f"\n{columns}\n|---" in f"\n{text}", (
        f"the table under {heading!r} no longer has the columns {columns!r}: "
        "update this test with it"
    )
    return text


async def test_the_welcome_example_and_the_metadata_table_name_what_a_server_sends() -> None:
    examples = _JSON_BLOCK.findall(section("### `welcome`"))
    assert examples, "the welcome section has no ```json example any more"
    example = json.loads(examples[0])
    table = _TABLE_FIELD.findall(table_of("### SessionMetadata", "| field | type | meaning |"))
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
        for names, kind in _TABLE_ROW.findall(table_of("### Metrics", "| metric | type | what |"))
        for name in _METRIC.findall(names)
    }
    assert documented, "no row of the Metrics table reads | `bamboo_…` | type | what |"
    async with run_server() as server:
        status, text = await get(server, "/metrics")
    assert status == 200, text
    exported = dict(_EXPORTED.findall(text))
    # Each counter's `_created` gauge, which the section's text names once for all.
    created = {name for name in exported if name.endswith("_created")}
    assert {name.removesuffix("_created") + "_total" for name in created} <= set(documented)
    assert all(exported[name] == "gauge" for name in created)
    assert {name: exported[name] for name in set(exported) - created} == documented


# "1 MiB (`--max-frame-bytes`", "20 per second, bursts of 1,000 (`--session-create-rate`,
# `--session-create-burst`": the defaults a row's cell names, each before the flags of
# the parenthesis it precedes, in their order.
_FLAGS_AFTER = re.compile(r"\(((?:`--[a-z-]+`(?:, )?)+)")
_FLAG = re.compile(r"`--([a-z-]+)`")
_AMOUNT = re.compile(r"(\d[\d,]*(?:\.\d+)?)(?: (KiB|MiB|GiB|s)\b)?")
_UNIT = {"": 1, "s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
LIMITS_COLUMNS = "| limit | default (flag) | over it |"
# Defaults that ServerConfig leaves to the process: the bound the table names.
_DERIVED = {"max_connections": DEFAULT_MAX_CONNECTIONS}


def documented_defaults() -> list[tuple[str, float]]:
    """(ServerConfig field, default) for each flag of the Limits table that a default
    stands before."""
    pairs = []
    for row in table_of("## Limits", LIMITS_COLUMNS).splitlines():
        cells = row.split(" | ")
        if not row.startswith("| ") or len(cells) < 3:
            continue
        cell, start = cells[1], 0
        for group in _FLAGS_AFTER.finditer(cell):
            flags = _FLAG.findall(group.group(1))
            amounts = _AMOUNT.findall(cell[start : group.start()])[-len(flags) :]
            assert len(amounts) == len(flags), (row, flags, amounts)
            for flag, (number, unit) in zip(flags, amounts, strict=True):
                pairs.append((flag.replace("-", "_"), float(number.replace(",", "")) * _UNIT[unit]))
            start = group.end()
    return pairs


def test_the_limits_table_gives_each_flag_the_default_a_server_has() -> None:
    defaults = ServerConfig()
    pairs = documented_defaults()
    # Every row names its flags so; too few found means the table changed form.
    assert len(pairs) >= 35, pairs
    rows = [
        row for row in table_of("## Limits", LIMITS_COLUMNS).splitlines() if row.startswith("| ")
    ]
    named = {flag.replace("-", "_") for flag in _FLAG.findall("\n".join(rows))}
    assert named <= set(FIELD_NAMES), named - set(FIELD_NAMES)
    for field, documented in pairs:
        actual = getattr(defaults, field)
        assert _DERIVED.get(field, actual) == documented, (field, actual, documented)


CLOSE_COLUMNS = "| code | meaning | reason sent by this server | client should | resume |"
_QUOTED = re.compile(r"`([^`]+)`")


def table_rows(heading: str, columns: str) -> list[list[str]]:
    """The cells of each row of the table under ``heading`` (no cell holds a ``|``)."""
    rows = table_of(heading, columns).splitlines()
    body = [row for row in rows if row.startswith("| ") and not row.startswith("|---")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in body[1:]]


def test_the_error_codes_table_lists_exactly_the_codes_a_server_sends() -> None:
    rows = table_rows("## Error codes", "| code | sent when | the client should |")
    assert sorted(row[0] for row in rows) == sorted(f"`{code.value}`" for code in ErrorCode)


def test_the_close_codes_table_lists_each_code_and_whether_to_resume_as_the_code_says() -> None:
    rows = table_rows("## Close codes", CLOSE_COLUMNS)
    documented = {int(row[0]): row[-1] for row in rows}
    assert sorted(documented) == sorted(CloseCode)
    assert documented == {code: "yes" if code.should_resume else "no" for code in CloseCode}


def server_strings() -> set[str]:
    """Every string constant of the server's modules (adjacent literals joined)."""
    found: set[str] = set()
    for module in (ROOT / "server").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_every_close_reason_the_table_quotes_is_one_the_server_holds() -> None:
    held = server_strings()
    quoted = [
        (row[0], reason)
        for row in table_rows("## Close codes", CLOSE_COLUMNS)
        for reason in _QUOTED.findall(row[2])
    ]
    assert len(quoted) >= 30, quoted  # too few: the table changed form
    assert [pair for pair in quoted if pair[1] not in held] == []
