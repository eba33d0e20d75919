"""The core: errors and reason codes, the typed settings, declarative-file reading.

Rule: imports nothing of Renkei (only the standard library and third-party packages). Every other layer
may import it. Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.core.errors import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "arguments",
    "clock",
    "config_files",
    "console",
    "errors",
    "logs",
    "retry",
    "settings",
    "tracing",
    "tracing_otel",
]
