"""The workers on the bus: the hub (gateway, records, forwarding), the registry, lookups, notices, and
the participant runtime every participant's service runs on, and the bus client (``streams.client.BusClient``)
on that runtime.

Rule: imports ``infra.records`` and the layers below it (``infra.platform``, ``infra.crypto``,
``infra.domain``, ``schemas``, ``infra.core``); never ``infra.ops``, ``connectors``, the tools or the CLI.
Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from streams.hub import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "app",
    "client",
    "coalesce",
    "gateway",
    "hub",
    "hub_faust",
    "hub_loop",
    "hub_produce",
    "lookups",
    "notices",
    "participant",
    "registration_rules",
    "registry",
]
