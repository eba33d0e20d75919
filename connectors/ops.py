"""``renkei connector …``: operating the connectors (dead letters, re-drive)."""

from __future__ import annotations

from typing import Any


def register(add: Any, common: Any) -> None:
    """Add the ``connector`` command group to the ``renkei`` parser (``add(name, handler, help)``)."""
