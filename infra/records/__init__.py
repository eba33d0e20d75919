"""Provision records (情報提供等記録): hash chains per person, checkpoints, and their verification.

Rule: imports ``infra.platform`` and below; the hub (``streams``) and the portal (``connectors``) import it.
Layers and their allowed directions: docs/architecture.md.
"""
