"""Domain rules: participants, the default-deny policy, procedures, who may send what, validation.

Rule: imports only ``infra.core`` and ``schemas``; no Kafka, no cryptography. Pure rules, tested without
a broker (``identity`` and ``disasters`` take a database connection from their caller, never open one).
Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.domain.policy import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "disasters",
    "identity",
    "lookup_applications",
    "participants",
    "policy",
    "procedures",
    "ratelimit",
    "senders",
    "validation",
]
