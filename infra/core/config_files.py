"""Reading Renkei's declarative files (policy, procedures): TOML, with one kind of error for a person to act on."""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from infra.core.errors import ConfigError

__all__ = ["entry_label", "read_toml"]


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file, or ``ConfigError`` naming ``what`` (e.g. "policy file") and the path."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def entry_label(raw: Any, *, file: str, table: str, label: str, name: str, allowed: Collection[str]) -> str:
    """Check one ``[[table]]`` entry of ``file`` is a table with only ``allowed`` keys; its label for messages.

    The label is ``label`` and the entry's ``name`` key, e.g. ``policy rule 'step2.provision-inquiry'``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: every [[{table}]] must be a table")
    entry = f"{label} {raw.get(name)!r}"
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{entry}: unknown keys {', '.join(unknown)}")
    return entry
