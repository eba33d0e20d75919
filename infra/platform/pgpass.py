"""PostgreSQL password files (libpq's ``.pgpass`` format), where the database secrets live.

A secret is never put in a DSN, a command line, ``stack.json`` or a log: a DSN names the file
(``?passfile=PATH``, which asyncpg and libpq both read) and the role, and the client looks the
password up by role when it connects. Files are written whole (a temporary file renamed over the
old one) with mode 0600 — libpq and asyncpg ignore a password file others can read.

Each line: ``host:port:database:user:password``; Renkei writes ``*:*:*:<role>:<secret>`` (any
server: the embedded one changes port at every start).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ensure_secrets", "new_secret", "read_passfile", "write_passfile"]


def new_secret() -> str:
    """A fresh role secret: 256 random bits, URL-safe (no ``:`` or ``\\`` to escape in the file)."""
    return secrets.token_urlsafe(32)


def read_passfile(path: Path) -> dict[str, str]:
    """role → secret for the ``*:*:*:role:secret`` lines of ``path`` ({} if the file is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 4)
        if len(parts) == 5 and parts[:3] == ["*", "*", "*"]:
            out[parts[3]] = parts[4]
    return out


def write_passfile(path: Path, entries: dict[str, str], *, comment: str = "") -> None:
    """Write ``entries`` (role → secret) to ``path``: mode 0600 from the start, replaced atomically."""
    for role, secret in entries.items():
        if ":" in role or "\n" in role or ":" in secret or "\\" in secret or "\n" in secret:
            raise ValueError("roles and secrets in a password file cannot contain ':', '\\' or newlines")
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    lines = [f"# {comment}"] if comment else []
    lines += [f"*:*:*:{role}:{secret}" for role, secret in entries.items()]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_secrets(path: Path, roles: Iterable[str], *, comment: str = "") -> tuple[dict[str, str], set[str]]:
    """Every role of ``roles`` with a secret in ``path``, generating (and writing) the missing ones.

    Returns (role → secret for every role in the file, the roles given a new secret now).
    """
    known = read_passfile(path)
    fresh = {role for role in roles if role not in known}
    if fresh:
        known.update({role: new_secret() for role in sorted(fresh)})
        write_passfile(path, known, comment=comment)
    elif path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a copy restored with looser rights would be ignored by the clients
    return known, fresh
