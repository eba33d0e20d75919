"""Domain rules: participants, the default-deny policy, procedures, who may send what, validation.

Rule: imports only ``infra.core`` and ``schemas``; no Kafka, no cryptography. Pure rules, tested without
a broker (``identity`` and ``disasters`` take a database connection from their caller, never open one).
Layers and their allowed directions: docs/architecture.md.
"""
