"""Console output of the commands: stable JSON on stdout for scripts, rich tables for a person.

Every command that prints has ``--json`` (docs/cli.md); both shapes go through here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["console", "print_json", "table"]


def console():
    """A rich console on stdout (imported late: ``rich`` costs start-up time a worker does not need)."""
    from rich.console import Console

    return Console()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    shown = Table(title=title)
    for col in columns:
        shown.add_column(col)
    for row in rows:
        shown.add_row(*("" if v is None else str(v) for v in row))
    console().print(shown)
