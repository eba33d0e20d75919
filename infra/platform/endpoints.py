"""The endpoints of a running platform: Kafka and PostgreSQL addresses filled in from the embedded stack."""

from __future__ import annotations

from infra.core.errors import StackError
from infra.core.settings import Settings

__all__ = ["resolve_running"]


def resolve_running(settings: Settings) -> Settings:
    """Fill unset Kafka/PostgreSQL endpoints from the embedded stack running under the state folder."""
    from infra.platform.embedded import read_state

    if not settings.embedded_kafka and not settings.embedded_pg:
        return settings
    components = {c.name: c for c in read_state(settings.state_dir)}
    needed = [n for n, embedded in (("broker", settings.embedded_kafka), ("postgres", settings.embedded_pg)) if embedded]
    missing = [n for n in needed if n not in components or not components[n].alive()]
    if missing:
        raise StackError(
            f"no running embedded {' and '.join(missing)} under {settings.state_dir}: start one with "
            "`renkei up --detach`, or configure RENKEI_KAFKA_BOOTSTRAP / RENKEI_PG_DSN"
        )
    broker = components.get("broker")
    return settings.with_endpoints(
        bootstrap=settings.kafka.bootstrap or components["broker"].endpoint,
        pg_dsn=settings.pg_dsn or components["postgres"].endpoint,
        broker=broker.kind or None if broker is not None and settings.embedded_kafka else None,
    )
