"""Admin calls aiokafka has no API for — ACLs and SCRAM users — through librdkafka's AdminClient (confluent-kafka).

``renkei acls apply`` (:func:`apply_acls`) makes the cluster's ACLs under a topic prefix what
``infra.platform.acls.acl_bindings`` says: it creates what is missing, reports what is there already, and
reports bindings on the prefix's resources that the platform no longer generates as ``stale``
(removed only when asked: ``prune``). ``infra.platform.cluster`` creates SCRAM users with
:func:`upsert_users`. librdkafka's calls block; they run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.core.errors import StackError
from infra.core.settings import KafkaSettings
from infra.platform.acls import AclBinding
from infra.platform.kafka import librdkafka_config

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class AclResult:
    binding: AclBinding
    status: str  # created | exists | stale | removed

    def to_json(self) -> dict[str, str]:
        b = self.binding
        return {"principal": b.principal, "operation": b.operation, "resource_type": b.resource_type,
                "resource": b.resource, "pattern": b.pattern, "status": self.status}


def _admin(kafka: KafkaSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(librdkafka_config(kafka) | {"socket.timeout.ms": str(int(TIMEOUT_S * 1000))})


def _to_librdkafka(b: AclBinding) -> Any:
    from confluent_kafka.admin import AclBinding as Binding
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return Binding(ResourceType[b.resource_type.upper()], b.resource, ResourcePatternType[b.pattern.upper()],
                   b.principal, "*", AclOperation[_OPERATIONS[b.operation]], AclPermissionType.ALLOW)


_OPERATIONS = {"Read": "READ", "Write": "WRITE", "Describe": "DESCRIBE", "Create": "CREATE",
               "IdempotentWrite": "IDEMPOTENT_WRITE", "DescribeConfigs": "DESCRIBE_CONFIGS", "Alter": "ALTER",
               "Delete": "DELETE", "AlterConfigs": "ALTER_CONFIGS", "All": "ALL"}
_NAMES = {v: k for k, v in _OPERATIONS.items()}


def _from_librdkafka(x: Any) -> AclBinding | None:
    """Ours, or None for what ``AclBinding`` cannot express (a DENY rule, a host other than any)."""
    if x.permission_type.name != "ALLOW" or x.host != "*" or x.operation.name not in _NAMES:
        return None
    return AclBinding(x.principal, _NAMES[x.operation.name], x.restype.name.lower(), x.name,
                      x.resource_pattern_type.name.lower())


def _result(future: Any, what: str) -> Any:
    try:
        return future.result(timeout=TIMEOUT_S)
    except Exception as exc:  # confluent_kafka.KafkaException and timeouts: one clear error
        raise StackError(f"{what} failed: {exc}") from None


def _describe_all(admin: Any) -> list[AclBinding]:
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ANY)
    found = _result(admin.describe_acls(everything, request_timeout=TIMEOUT_S), "describing the ACLs")
    return [b for b in (_from_librdkafka(x) for x in found) if b is not None]


def _apply(kafka: KafkaSettings, wanted: list[AclBinding], prefix: str, prune: bool) -> list[AclResult]:
    from confluent_kafka.admin import AclBindingFilter

    admin = _admin(kafka)
    present = set(_describe_all(admin))
    missing = [b for b in dict.fromkeys(wanted) if b not in present]
    if missing:
        futures = admin.create_acls([_to_librdkafka(b) for b in missing], request_timeout=TIMEOUT_S)
        for binding, future in futures.items():
            _result(future, f"creating the ACL {binding}")
    wanted_set = set(wanted)
    stale = sorted((b for b in present if b not in wanted_set and b.resource.startswith(f"{prefix}.")),
                   key=lambda b: (b.principal, b.resource_type, b.resource, b.operation))
    if stale and prune:
        filters = []
        for b in stale:
            x = _to_librdkafka(b)
            filters.append(AclBindingFilter(x.restype, x.name, x.resource_pattern_type, x.principal, x.host,
                                            x.operation, x.permission_type))
        for binding, future in admin.delete_acls(filters, request_timeout=TIMEOUT_S).items():
            _result(future, f"removing the ACL {binding}")
    created = set(missing)
    results = [AclResult(b, "created" if b in created else "exists") for b in dict.fromkeys(wanted)]
    return results + [AclResult(b, "removed" if prune else "stale") for b in stale]


async def apply_acls(kafka: KafkaSettings, bindings: Iterable[AclBinding], *, prefix: str,
                     prune: bool = False) -> list[AclResult]:
    """Create the missing ``bindings``; report the others, and the stale ones under ``prefix`` (see module)."""
    return await asyncio.to_thread(_apply, kafka, list(bindings), prefix, prune)


async def list_acls(kafka: KafkaSettings) -> list[AclBinding]:
    """Every ALLOW binding on the cluster that :class:`AclBinding` can express."""
    return await asyncio.to_thread(lambda: _describe_all(_admin(kafka)))


def _missing_users(kafka: KafkaSettings, users: list[str]) -> list[str]:
    from confluent_kafka import KafkaException

    admin = _admin(kafka)
    missing = []
    for user, future in admin.describe_user_scram_credentials(users, request_timeout=TIMEOUT_S).items():
        try:
            future.result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].name() != "RESOURCE_NOT_FOUND":
                raise StackError(f"describing the SCRAM user {user} failed: {exc}") from None
            missing.append(user)
    return missing


async def missing_users(kafka: KafkaSettings, users: Iterable[str]) -> list[str]:
    """The users among ``users`` the cluster has no SCRAM credentials for."""
    return await asyncio.to_thread(_missing_users, kafka, list(users))


def _upsert_users(kafka: KafkaSettings, passwords: Mapping[str, str], mechanism: str) -> None:
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    info = ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], 4096)
    changes = [UserScramCredentialUpsertion(user, info, password.encode()) for user, password in passwords.items()]
    for user, future in _admin(kafka).alter_user_scram_credentials(changes, request_timeout=TIMEOUT_S).items():
        _result(future, f"creating the SCRAM user {user}")


async def upsert_users(kafka: KafkaSettings, passwords: Mapping[str, str], mechanism: str) -> None:
    """Create (or reset) SCRAM credentials: user → password."""
    await asyncio.to_thread(_upsert_users, kafka, dict(passwords), mechanism)


__all__ = ["AclResult", "apply_acls", "list_acls", "missing_users", "upsert_users"]
