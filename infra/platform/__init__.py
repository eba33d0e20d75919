"""The platform: Kafka clients and topics, ACLs, PostgreSQL, the embedded stack, the key store, metrics.

Rule: imports ``infra.crypto``, ``infra.domain``, ``schemas`` and ``infra.core``; never ``streams``,
``connectors``, the ops tools or the CLI. Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.platform.kafka import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "acls",
    "cluster",
    "cluster_tls",
    "embedded",
    "embedded_pg",
    "endpoints",
    "kafka",
    "kafka_admin",
    "kafka_broker",
    "keyadmin",
    "keystore",
    "metrics",
    "metrics_hub",
    "metrics_server",
    "pgdsn",
    "pgnotify",
    "pglayout",
    "pgpass",
    "pgprovision",
    "processes",
    "scans",
    "stack",
    "storage",
    "topics",
]
