"""``renkei portal|agency|dicj|bank …``: each participant's own commands against a running stack."""

from __future__ import annotations

from typing import Any


def register(add: Any, common: Any) -> None:
    """Add the participant command groups to the ``renkei`` parser (``add(name, handler, help)``)."""
