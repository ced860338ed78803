"""Where a server's settings come from: defaults, a TOML file, the environment, flags.

Each source yields ``{field: value}`` with every value parsed and checked by the one path
of server/config.py (``parse_text`` for flags and variables, ``parse_toml_value`` for
the file), and every error names its source: ``--port``, ``BAMBOO_PORT``, or
``bamboo.toml: port``. Later sources win: flags, then environment, then file, then
defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import FIELD_NAMES, ServerConfig, parse_text, parse_toml_value

CONFIG_VARIABLE = "BAMBOO_CONFIG"  # names the TOML file when --config does not


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def variable_name(field: str) -> str:
    return "BAMBOO_" + field.upper()


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = environ.get(variable_name(name))
        if raw is not None:
            try:
                values[name] = parse_text(name, raw)
            except ValueError as exc:
                raise ValueError(f"{variable_name(name)}: {exc}") from None
    return values


def settings_from_flags(given: Mapping[str, str | None]) -> dict[str, Any]:
    """``given``: each field's flag as typed, None when absent."""
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = given.get(name)
        if raw is not None:
            try:
                values[name] = parse_text(name, raw)
            except ValueError as exc:
                raise ValueError(f"{flag_name(name)}: {exc}") from None
    return values


def settings_from_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: top-level keys named as the fields (``max_sessions``,
    or as the flags, ``max-sessions``)."""
    import tomllib  # only with --config (or BAMBOO_CONFIG): most starts read no file

    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ValueError(f"{path}: unknown setting {key!r}")
        try:
            values[name] = parse_toml_value(name, value)
        except ValueError as exc:
            raise ValueError(f"{path}: {key}: {exc}") from None
    return values


def load_config(
    flags: Mapping[str, str | None], environ: Mapping[str, str], config_file: str | None
) -> ServerConfig:
    """Defaults, then the file (``config_file``, else ``BAMBOO_CONFIG``), then the
    environment, then the flags."""
    values: dict[str, Any] = {}
    path = config_file or environ.get(CONFIG_VARIABLE)
    if path:
        values.update(settings_from_file(Path(path).expanduser()))
    values.update(settings_from_env(environ))
    values.update(settings_from_flags(flags))
    return ServerConfig(**values)
