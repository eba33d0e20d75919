"""Provision records (情報提供等記録): hash chains per person, checkpoints, and their verification.

Rule: imports ``infra.platform`` and below; the hub (``streams``) and the portal (``connectors``) import it.
Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.records.provisions import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "checkpoint_builder",
    "checkpoint_log",
    "checkpoints",
    "provisions",
    "records_verify",
]
