"""The platform: Kafka clients and topics, ACLs, PostgreSQL, the embedded stack, the key store, metrics.

Rule: imports ``infra.crypto``, ``infra.domain``, ``schemas`` and ``infra.core``; never ``streams``,
``connectors``, the ops tools or the CLI. Layers and their allowed directions: docs/architecture.md.
"""
