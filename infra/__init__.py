"""Renkei's infrastructure, in layers by concern: core < domain < crypto < platform < records, then ops,
tools and the CLI (``streams`` and ``connectors`` sit between them).

Rule: this package holds no code of its own; each subpackage states its rule in its ``__init__``.
Layers and their allowed directions: docs/architecture.md.
"""

__all__ = [
    "cli",
    "core",
    "crypto",
    "domain",
    "ops",
    "platform",
    "records",
    "tools",
]
