"""The root holder's changes to the key directory: rotate, retire, revoke, suspend, resume, sync.

Who may: ops holding the platform root key (``root.key`` in the keys folder and its passphrase),
the only key that signs directory entries, through the broker principal of the key publisher
(``User:keys`` in ``infra.platform.acls``), the only one allowed to write the keys topic. Without the root
key every change is refused (:class:`KeyAdminRefused`, ``ROOT_KEY_UNAVAILABLE``).

Every change runs the same way (:func:`change_directory`), under the key store's directory lock:

1. read the keys topic to its end, then the store's journal (the last directory it published);
2. plan the new entries — pure functions below: each takes the next version of its Kafka key,
   and a key's status never moves back;
3. sign them and publish, after anything the topic lost that the journal holds (and any record
   whose last copy on the topic is a bad one, so compaction keeps the good one);
4. write the journal; for an ops command, append one event to the ops audit trail.

Readers (the hub, every participant runtime) apply a record only if its root signature verifies
and its version is above what they hold: a replay, a forgery or a bare tombstone changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from infra.core.errors import ConfigError, RenkeiError
from infra.core.settings import Settings
from infra.crypto.keys import (
    STATUS_KEY_PREFIX,
    DirectoryEntry,
    KeyDirectory,
    KeyEntry,
    Outcome,
    ParticipantState,
    ParticipantStatus,
    Purpose,
    RootAuthority,
    Status,
    now_epoch_ms,
    signed_record_key,
)
from infra.domain.participants import Kind, Participant, Participants
from infra.platform.keystore import KeyStore, publish_directory, read_topic

ROOT_KEY_UNAVAILABLE = "ROOT_KEY_UNAVAILABLE"
UNKNOWN_KEY = "UNKNOWN_KEY"
UNKNOWN_PARTICIPANT = "UNKNOWN_PARTICIPANT"
NO_KEYSET = "NO_KEYSET"
PROTECTED = "PROTECTED"

DEFAULT_OVERLAP_S = 10
"""Rotation: seconds before the new keys take over (every process has them by then); the old keys
verify what they signed for as long again."""

_RANK = {Status.ACTIVE: 0, Status.RETIRED: 1, Status.REVOKED: 2}


class KeyAdminRefused(RenkeiError):
    """A directory change that is not allowed or names nothing; ``reason`` is a stable code (exit 2)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class Change:
    """One entry signed and published by a command."""

    record_key: str
    kind: str  # key | participant
    participant: str
    state: str
    version: int

    @classmethod
    def of(cls, entry: DirectoryEntry) -> Change:
        if isinstance(entry, KeyEntry):
            return cls(entry.key_id, "key", entry.participant_id, entry.status.value, entry.version)
        return cls(entry.record_key, "participant", entry.participant_id, entry.state.value, entry.version)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.record_key, "kind": self.kind, "participant": self.participant, "state": self.state,
                "version": self.version}


@dataclass
class Published:
    """What a change published: new entries, records restored from the journal, and the directory after."""

    changes: list[Change]
    restored: int
    directory: KeyDirectory
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


# --------------------------------------------------------------------------- planning (pure)


def _next(directory: KeyDirectory, record_key: str) -> int:
    return directory.version(record_key) + 1


def plan_keys(directory: KeyDirectory, entries: Iterable[KeyEntry]) -> list[KeyEntry]:
    """What publishing a keyset's entries changes: keys the directory lacks, and keys whose status the
    keyset has moved further along (a rotation). Never a key moved back: a revoked key stays revoked."""
    out = []
    for entry in entries:
        held = directory.entry(entry.key_id)
        if held is None:
            out.append(replace(entry, version=max(entry.version, _next(directory, entry.key_id))))
        elif _RANK[entry.status] > _RANK[held.status]:
            out.append(replace(entry, version=_next(directory, entry.key_id)))
    return out


def _known_key(directory: KeyDirectory, key_id: str) -> KeyEntry:
    entry = directory.entry(key_id)
    if entry is None:
        raise KeyAdminRefused(UNKNOWN_KEY, f"the key directory lists no key {key_id!r} (see `renkei keys list`)")
    return entry


def plan_revoke(directory: KeyDirectory, key_id: str) -> list[KeyEntry]:
    """The key REVOKED at the next version (nothing if it already is): refused at once, for good."""
    entry = _known_key(directory, key_id)
    if entry.status is Status.REVOKED:
        return []
    return [replace(entry, status=Status.REVOKED, version=_next(directory, key_id))]


def plan_retire(directory: KeyDirectory, key_id: str, at_ms: int) -> list[KeyEntry]:
    """An ACTIVE key RETIRED at ``at_ms`` (epoch ms; nothing if it is not ACTIVE): what it signed until then still
    verifies."""
    entry = _known_key(directory, key_id)
    if entry.status is not Status.ACTIVE:
        return []
    return [replace(entry, status=Status.RETIRED, not_after=at_ms, version=_next(directory, key_id))]


def plan_status(directory: KeyDirectory, participant: Participant, suspended: bool, at_ms: int) -> list[ParticipantStatus]:
    """The participant's status at the next version, if it changes (the file's flag counts until one is published)."""
    if participant.kind is Kind.HUB:
        raise KeyAdminRefused(PROTECTED, "the hub cannot be suspended: every message goes through it. Revoke or "
                                         "rotate its keys instead")
    current = directory.status(participant.id)
    now_suspended = current.suspended if current is not None else participant.suspended
    if now_suspended == suspended:
        return []
    state = ParticipantState.SUSPENDED if suspended else ParticipantState.ACTIVE
    return [ParticipantStatus(participant.id, state, _next(directory, STATUS_KEY_PREFIX + participant.id), at_ms)]


def usable_keys_left(directory: KeyDirectory, participant_id: str, at_ms: int) -> dict[Purpose, int]:
    """How many keys of each purpose the participant can still use at ``at_ms`` (epoch ms; for warnings)."""
    left = {Purpose.SIGN: 0, Purpose.ENCRYPT: 0}
    for key_id in directory.key_ids(participant_id):
        entry = directory.entry(key_id)
        if entry is not None and entry.status is not Status.REVOKED and (entry.not_after is None or entry.not_after > at_ms):
            left[entry.purpose] += 1
    return left


def _cut_off_warnings(directory: KeyDirectory, participants: Iterable[str], at_ms: int) -> list[str]:
    out = []
    for pid in sorted(set(participants)):
        left = usable_keys_left(directory, pid, at_ms)
        for purpose, n in left.items():
            if n == 0:
                out.append(f"{pid} has no usable {purpose.value.lower()} key now: its messages are refused until "
                           f"`renkei keys rotate {pid} --overlap 0`")
    return out


# --------------------------------------------------------------------------- publishing


def _root(store: KeyStore) -> RootAuthority:
    if not store.has_root_key():
        raise KeyAdminRefused(ROOT_KEY_UNAVAILABLE, f"no root key at {store.dir / 'root.key'}: only ops holding the "
                                                    "platform root key may change the key directory")
    try:
        return store.root()
    except ConfigError as exc:
        raise KeyAdminRefused(ROOT_KEY_UNAVAILABLE, f"the root key cannot be opened: {exc}") from None


Plan = Callable[[KeyDirectory], Sequence[DirectoryEntry]]


async def change_directory(settings: Settings, store: KeyStore, plan: Plan, *,
                           prepare: Callable[[], Plan] | None = None) -> Published:
    """Read, plan, sign, publish, journal — under the store's directory lock. See the module docstring.

    ``prepare`` runs under the lock once the root key is open (a rotation writes the new keyset
    there) and returns the plan to use instead of ``plan``.
    """
    with store.directory_lock():
        root = _root(store)
        if prepare is not None:
            plan = prepare()
        topic = await read_topic(settings, root.public_key)
        directory = topic.directory
        restore: dict[str, bytes] = {}
        for value in store.read_journal():
            if directory.apply_record(None, value, where="the journal") is Outcome.APPLIED:
                restore[signed_record_key(value)] = value  # the topic lost it, or holds an older one
        for key in topic.shadowed:  # its last record on the topic is a bad one: put the good one last again
            value = directory.held_value(key)
            if value is not None:
                restore.setdefault(key, value)
        entries = list(plan(directory))
        new = [(e.record_key, root.sign_entry(e)) for e in entries]
        for entry, (key, value) in zip(entries, new, strict=True):
            outcome = directory.apply_signed(entry, value)
            if outcome is not Outcome.APPLIED:  # a planning bug: publish nothing rather than a record readers skip
                raise RenkeiError(f"the planned entry for {key} would not apply ({outcome.value})")
        if restore or new:
            await publish_directory(settings, list(restore.items()) + new)
        store.write_journal(value for _, value in directory.signed_records())
    return Published([Change.of(e) for e in entries], len(restore), directory)


async def sync(settings: Settings, store: KeyStore, participants: Participants) -> Published:
    """Publish what the directory lacks: keys of this store's keysets not listed (or listed at an
    earlier stage of their life), and records the topic lost. Never republishes a key as ACTIVE."""
    def plan() -> Plan:
        entries = [e for p in participants if store.has_keyset(p.id) for e in store.keyset(p.id).public_entries()]
        return lambda directory: plan_keys(directory, entries)

    return await change_directory(settings, store, lambda d: [], prepare=plan)


async def rotate(settings: Settings, store: KeyStore, participants: Participants, participant_id: str, *,
                 overlap_s: float = DEFAULT_OVERLAP_S) -> Published:
    """New keys for a participant whose keyset this store holds; the old ones retire after the overlap."""
    if participant_id not in participants:
        raise KeyAdminRefused(UNKNOWN_PARTICIPANT, f"{participant_id!r} is not a registered participant")
    if overlap_s < 0:
        raise ConfigError("--overlap must be zero or more seconds")

    def prepare() -> Plan:
        if not store.has_keyset(participant_id):
            raise KeyAdminRefused(NO_KEYSET, f"this key store holds no keyset for {participant_id}: a participant "
                                             "that keeps its own keys publishes its new public keys through the root "
                                             "holder (docs/security.md)")
        keyset = store.keyset(participant_id)
        at_ms = now_epoch_ms()
        overlap_ms = int(overlap_s * 1000)
        keyset.rotate(now=at_ms, activate_at=at_ms + overlap_ms, retire_at=at_ms + 2 * overlap_ms)
        store.save_keyset(keyset)  # before publishing: a running holder re-reads it when the keys appear
        entries = keyset.public_entries()
        return lambda directory: plan_keys(directory, entries)

    return await change_directory(settings, store, lambda d: [], prepare=prepare)


async def revoke(settings: Settings, store: KeyStore, key_id: str) -> Published:
    published = await change_directory(settings, store, lambda d: plan_revoke(d, key_id))
    published.warnings = _cut_off_warnings(published.directory, [c.participant for c in published.changes], now_epoch_ms())
    return published


async def retire(settings: Settings, store: KeyStore, key_id: str) -> Published:
    at_ms = now_epoch_ms()
    published = await change_directory(settings, store, lambda d: plan_retire(d, key_id, at_ms))
    published.warnings = _cut_off_warnings(published.directory, [c.participant for c in published.changes], at_ms + 1)
    return published


async def set_suspended(settings: Settings, store: KeyStore, participants: Participants, participant_id: str,
                        suspended: bool) -> Published:
    participant = participants.get(participant_id)
    if participant is None:
        raise KeyAdminRefused(UNKNOWN_PARTICIPANT, f"{participant_id!r} is not a registered participant")
    at_ms = now_epoch_ms()
    return await change_directory(settings, store, lambda d: plan_status(d, participant, suspended, at_ms))
