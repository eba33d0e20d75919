"""Reading Renkei's declarative files (policy, procedures): TOML, with one kind of error for a person to act on."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from infra.errors import ConfigError

__all__ = ["read_toml"]


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file, or ``ConfigError`` naming ``what`` (e.g. "policy file") and the path."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
