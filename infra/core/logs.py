"""Log lines for people (``log_format = "text"``) or for a log pipeline (``"json"``, one object per line).

A JSON line holds: ``time`` (UTC, ISO 8601), ``level``, ``component`` (hub, registry, banks, dicj,
connector-…), ``participant``, ``logger``, ``message``, and where known the ``message_id`` and
``correlation_id`` (the participant's own: ids of the leg it sent or received, never another
participant's), the ``reason`` code and the ``trace_id`` (infra.core.tracing), plus ``exception`` for an
error's traceback. Never a token, a body field or a personal value: the fields come from envelope
metadata the code puts there, and the leak scan (infra.tools.leakscan) reads these files like any other log.

Per-message fields are set for a block of code with :func:`log_context` (a context variable, so
concurrent tasks keep their own), or for one line with ``extra={"reason": ...}``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "LogContext", "TEXT_FORMAT", "configure_logging", "log_context"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LogContext:
    """The per-message fields of a JSON log line ("" = not known here)."""

    participant: str = ""
    message_id: str = ""
    correlation_id: str = ""
    reason: str = ""
    trace_id: str = ""


_current: contextvars.ContextVar[LogContext] = contextvars.ContextVar("renkei_log_context", default=LogContext())


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Lines logged inside the block carry ``fields`` (those of :class:`LogContext`)."""
    token = _current.set(replace(_current.get(), **fields))
    try:
        yield
    finally:
        _current.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; per-message fields from ``extra=`` first, then :func:`log_context`."""

    def __init__(self, component: str, participant: str = "") -> None:
        super().__init__()
        self.component = component
        self.participant = participant

    def format(self, record: logging.LogRecord) -> str:
        context = asdict(_current.get())
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": self.component,
            "participant": getattr(record, "participant", "") or context["participant"] or self.participant,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("message_id", "correlation_id", "reason", "trace_id"):
            line[name] = str(getattr(record, name, "") or context[name])
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str, component: str, participant: str = "") -> logging.Handler:
    """Send every log line of this process to stderr as ``log_format`` says; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component, participant) if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler
