"""The message catalogue: message types, the Avro schemas and the codec, value bounds.

Rule: imports only ``infra.core``; every layer above may import it. Layers and their allowed directions:
docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from schemas.types import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "bounds",
    "catalogue",
    "codec",
    "registry",
    "types",
]
