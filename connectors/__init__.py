"""The edges of the bus: bank channel bridges (HTTP, files), simulated banks, DICJ's desk, the portal,
and their ``renkei`` commands (the bus client, ``BusClient``, is a runtime client: ``streams.client``).

Rule: imports ``infra.ops``, ``streams`` and every layer below them; never the tools or the CLI (the CLI
imports the ``register`` functions of the command modules). Layers and their allowed directions:
docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from connectors.dicj import …``. The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "agency",
    "bank_questions",
    "bank_sim",
    "bankfiles",
    "bankhttp",
    "bankhttp_bank",
    "bankhttp_openapi",
    "bankhttp_requests",
    "channel_key_command",
    "channel_keys",
    "channel_tls",
    "cli_client",
    "commands",
    "dicj",
    "httpsig",
    "inquiry_batch",
    "inquiry_batch_command",
    "jlis_sim",
    "lookup_commands",
    "ops",
    "portal",
    "portal_card_command",
    "portal_cards",
    "portal_notices",
    "portal_schema",
    "portal_sessions",
    "portal_throttle",
    "portal_views",
    "runtime",
    "sdk",
    "serve",
]
