"""The key store: where each participant's keys live, and how the key directory travels.

Under ``keys_dir`` (default ``<state>/keys``), every private key file is
encrypted at rest (``infra.keys``: scrypt + AES-GCM, mode 0600):

- ``root.key`` / ``root.pub`` — the platform root key that signs the directory;
- ``<participant>.keyset`` — each participant's signing and encryption keys;
- ``token-authority.secret`` — the hub's ``K_link`` and token master secret;
- ``records.key`` / ``records.pub`` — the records key that signs provision-record
  chain heads and checkpoints (``infra.records_keys``); verifiers need only ``records.pub``.

The passphrase comes from ``keys_passphrase_file``; in the embedded world a
random one is generated once beside the keys (mode 0600).  In production each
participant holds only its own keyset file, and the root key stays offline.

The directory is published as signed entries on the compacted keys topic
(``publish_directory``) and every process rebuilds it from there
(``load_directory``), verifying the root signature on every entry, so a
revocation published there reaches every verifier.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from infra.errors import ConfigError
from infra.keys import KeyDirectory, Keyset, RootAuthority, read_encrypted, write_encrypted
from infra.participants import Kind, Participants
from infra.records_keys import RecordsKey, RecordsPublicKeys
from infra.settings import Settings
from infra.tokens import TokenAuthority

_TOKEN_SECRET_KIND = b"token-authority"
REGISTRY_KEK = "registry-kek"  # wraps the registry's per-person data keys


class KeyStore:
    """Private keys of the participants this process may act as, read from ``keys_dir``."""

    def __init__(self, keys_dir: Path, passphrase_file: Path | None = None) -> None:
        self.dir = Path(keys_dir)
        self.passphrase_file = passphrase_file or self.dir / "passphrase"

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyStore:
        return cls(settings.resolved_keys_dir, settings.keys_passphrase_file)

    def _passphrase(self, *, create: bool = False) -> bytes:
        try:
            return self.passphrase_file.read_bytes().strip()
        except FileNotFoundError:
            if not create:
                raise ConfigError(
                    f"no key passphrase at {self.passphrase_file}: run `renkei keys bootstrap` "
                    "(embedded) or set keys_passphrase_file"
                ) from None
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(32).encode()
        fd = os.open(self.passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        return value

    def _store_salt(self) -> bytes:
        """The scrypt salt shared by this store's keyset files, created once (0600).

        One derivation per process instead of one per file: the bank simulator loads 1,000
        keysets.  Files written before (their own salts) still load, one derivation each.
        """
        path = self.dir / "kdf.salt"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it meanwhile
                return path.read_bytes()
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(16))
            return path.read_bytes()

    def _path(self, participant_id: str) -> Path:
        return self.dir / f"{participant_id}.keyset"

    def bootstrap(self, participants: Participants, *, kem: str = "x25519") -> list[str]:
        """Create the root key, the token authority secret and every missing keyset. Idempotent.

        Returns the ids of the participants whose keysets were created now.
        """
        passphrase = self._passphrase(create=True)
        if not (self.dir / "root.key").exists():
            root = RootAuthority.generate()
            root.save(self.dir / "root.key", passphrase)
            (self.dir / "root.pub").write_text(root.public_key.hex() + "\n")
        if not (self.dir / "token-authority.secret").exists():
            write_encrypted(self.dir / "token-authority.secret", _TOKEN_SECRET_KIND,
                            secrets.token_bytes(64), passphrase)
        self.create_records_key()
        if any(p.kind is Kind.REGISTRY for p in participants):
            self.secret(REGISTRY_KEK)  # created here, once, never raced by two workers
        created = []
        salt = self._store_salt()
        for p in participants:
            if not self._path(p.id).exists():
                Keyset.generate(p.id, kem).save(self._path(p.id), passphrase, salt=salt)
                created.append(p.id)
        return created

    def root_public_key(self) -> bytes:
        try:
            return bytes.fromhex((self.dir / "root.pub").read_text().strip())
        except FileNotFoundError:
            raise ConfigError(f"no root public key at {self.dir / 'root.pub'}: run `renkei keys bootstrap`") from None

    def root(self) -> RootAuthority:
        return RootAuthority.load(self.dir / "root.key", self._passphrase())

    def keyset(self, participant_id: str) -> Keyset:
        path = self._path(participant_id)
        if not path.exists():
            raise ConfigError(f"no keyset for participant {participant_id!r} at {path}")
        return Keyset.load(path, self._passphrase())

    def save_keyset(self, keyset: Keyset) -> None:
        keyset.save(self._path(keyset.participant_id), self._passphrase(), salt=self._store_salt())

    def secret(self, name: str, size: int = 32) -> bytes:
        """A named symmetric secret of this participant (e.g. the registry's data-key KEK), created once."""
        path = self.dir / f"{name}.secret"
        kind = name.encode()
        if not path.exists():
            write_encrypted(path, kind, secrets.token_bytes(size), self._passphrase())
        return read_encrypted(path, kind, self._passphrase())

    # -- the records key (infra.records_keys): signs provision-record heads, checkpoints and anchors
    def create_records_key(self) -> bool:
        """Create ``records.key`` / ``records.pub`` if missing (``bootstrap`` does, before any worker starts)."""
        if (self.dir / "records.key").exists():
            return False
        key = RecordsKey.generate()
        key.save(self.dir / "records.key", self._passphrase(create=True))
        (self.dir / "records.pub").write_text(key.public_key.hex() + "\n")
        return True

    def records_key(self) -> RecordsKey:
        """The records signing key (the hub's). ConfigError when it was never created."""
        path = self.dir / "records.key"
        if not path.exists():
            raise ConfigError(f"no records key at {path}: `renkei up` creates it (embedded); in production "
                              "install the hub's records.key there")
        return RecordsKey.load(path, self._passphrase())

    def records_public_keys(self) -> RecordsPublicKeys:
        """What a verifier of provision records needs: the records public keys (``records.pub``)."""
        return RecordsPublicKeys.from_file(self.dir / "records.pub")

    def token_authority(self) -> TokenAuthority:
        raw = read_encrypted(self.dir / "token-authority.secret", _TOKEN_SECRET_KIND, self._passphrase())
        return TokenAuthority(raw[:32], raw[32:], keyset=self.keyset("hub"))

    def local_directory(self, participants: Participants) -> KeyDirectory:
        """The directory built from the key files (for tools with the root key; workers use the topic)."""
        root = self.root()
        directory = KeyDirectory(root.public_key)
        for p in participants:
            for key, value in root.to_records(self.keyset(p.id).public_entries()):
                directory.apply_record(key, value)
        return directory


def directory_records(store: KeyStore, participants: Participants) -> list[tuple[str, bytes]]:
    """Root-signed ``(key id, entry)`` records of every participant's public keys."""
    root = store.root()
    out: list[tuple[str, bytes]] = []
    for p in participants:
        out += root.to_records(store.keyset(p.id).public_entries())
    return out


async def publish_directory(settings: Settings, records: list[tuple[str, bytes]]) -> int:
    """Write signed directory entries to the compacted keys topic."""
    from infra.kafka import producer
    from infra.topics import TopicNames

    topic = TopicNames(settings.kafka.topic_prefix).keys
    prod = producer(settings, linger_ms=20)
    await prod.start()
    try:
        for key, value in records:
            await prod.send(topic, value, key=key.encode())
        await prod.flush()
    finally:
        await prod.stop()
    return len(records)


async def load_directory(settings: Settings, root_public_key: bytes, *, timeout: float = 30.0) -> KeyDirectory:
    """Rebuild the key directory from the keys topic, up to its current end."""
    import time

    from aiokafka import TopicPartition

    from infra.errors import StackError

    from infra.kafka import consumer
    from infra.topics import TopicNames

    topic = TopicNames(settings.kafka.topic_prefix).keys
    directory = KeyDirectory(root_public_key)
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        partitions = cons.partitions_for_topic(topic) or set()
        if not partitions:
            await cons._client.force_metadata_update()
            partitions = cons.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        pending = set(tps)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise StackError(f"the key directory topic {topic} could not be read to its end in {timeout:.0f} s")
            batch = await cons.getmany(*pending, timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    directory.apply_record(m.key, m.value)
            for tp in list(pending):
                high = cons.highwater(tp)
                if high is not None and await cons.position(tp) >= high:
                    pending.discard(tp)
    finally:
        await cons.stop()
    return directory


async def follow_directory(settings: Settings, directory: KeyDirectory, *,
                           on_change: Callable[[int], None] | None = None) -> None:
    """Apply every record of the keys topic to ``directory`` for as long as it runs (cancel to stop).

    Workers build the directory with :func:`load_directory` at start and then follow: a rotated key
    is usable, and a revoked one refused, as soon as its record reaches the topic.  It reads from the
    beginning (records are idempotent; a record between the load and the follow is never missed).
    A record that fails the root signature is logged and skipped: it changes nothing.
    ``on_change(n)`` is called after each fetch in which ``n > 0`` records changed the directory.
    """
    import asyncio
    import logging

    from aiokafka import TopicPartition

    from infra.errors import Rejection
    from infra.kafka import consumer
    from infra.topics import TopicNames

    log = logging.getLogger("renkei.keys")
    topic = TopicNames(settings.kafka.topic_prefix).keys
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        partitions = cons.partitions_for_topic(topic) or set()
        while not partitions:
            await asyncio.sleep(1.0)
            await cons._client.force_metadata_update()
            partitions = cons.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        while True:
            batch = await cons.getmany(*tps, timeout_ms=500)
            changed = 0
            for msgs in batch.values():
                for m in msgs:
                    try:
                        changed += directory.apply_record(m.key, m.value)
                    except Rejection as exc:
                        log.warning("key directory record at offset %d skipped: %s", m.offset, exc.code)
            if changed and on_change is not None:
                on_change(changed)
    finally:
        await cons.stop()
