"""Where a bank's HTTP channel keys live: issued, rotated, retired and exported for the bank.

The connector's copy is kept in the key store (``infra.platform.keystore.KeyStore.secret``:
encrypted at rest under the store's passphrase, 0600), one secret per key,
named ``bank-http.<bank id>.<n>.secret``; the key id is ``<bank id>.<n>``.
Rotation adds ``n + 1`` (it signs from then on; older keys still verify until
retired), retiring deletes a key's file.  The bank's own systems get their copy
as a JSON file written 0600 (:func:`export`, ``renkei bank channel-key
--export FILE``) and read it with :func:`load_exported`; hand it over like any
credential, never by e-mail.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from connectors.httpsig import ChannelKey, ChannelKeys
from infra.core.errors import ConfigError
from infra.core.settings import Settings
from infra.platform.keystore import KeyStore

KEY_BYTES = 32
_NAME = "bank-http.{bank}.{n}"


def _numbers(store: KeyStore, bank_id: str) -> list[int]:
    pattern = re.compile(re.escape(f"bank-http.{bank_id}.") + r"([0-9]+)\.secret")
    found = (pattern.fullmatch(p.name) for p in store.dir.glob(f"bank-http.{bank_id}.*.secret"))
    return sorted(int(m.group(1)) for m in found if m)


def load(settings: Settings, bank_id: str, *, create: bool = False) -> ChannelKeys:
    """The bank's channel keys, oldest first; with ``create`` the first one is issued when there is none."""
    store = KeyStore.for_settings(settings)
    numbers = _numbers(store, bank_id)
    if not numbers:
        if not create:
            raise ConfigError(f"no HTTP channel key for {bank_id}: issue one with `renkei bank channel-key "
                              f"--bank {bank_id}`")
        numbers = [1]
    return ChannelKeys(bank_id, tuple(ChannelKey(f"{bank_id}.{n}", store.secret(_NAME.format(bank=bank_id, n=n),
                                                                                  KEY_BYTES)) for n in numbers))


def rotate(settings: Settings, bank_id: str) -> ChannelKeys:
    """Issue the next key (it signs from now on); the others keep verifying until retired."""
    store = KeyStore.for_settings(settings)
    numbers = _numbers(store, bank_id)
    store.secret(_NAME.format(bank=bank_id, n=(numbers[-1] + 1) if numbers else 1), KEY_BYTES)
    return load(settings, bank_id)


def retire(settings: Settings, bank_id: str, key_id: str) -> ChannelKeys:
    """Stop accepting ``key_id`` (its file is deleted); the last key cannot be retired, rotate first."""
    store = KeyStore.for_settings(settings)
    numbers = _numbers(store, bank_id)
    prefix = f"{bank_id}."
    if not key_id.startswith(prefix) or not key_id[len(prefix):].isdigit() or int(key_id[len(prefix):]) not in numbers:
        raise ConfigError(f"{key_id} is not a channel key of {bank_id}")
    if len(numbers) == 1:
        raise ConfigError(f"{key_id} is {bank_id}'s only channel key: rotate first, then retire it")
    (store.dir / f"{_NAME.format(bank=bank_id, n=int(key_id[len(prefix):]))}.secret").unlink()
    return load(settings, bank_id)


def export(keys: ChannelKeys, path: Path) -> None:
    """Write the bank's copy of its keys (JSON, mode 0600, replaced atomically)."""
    data = {"bank_id": keys.bank_id,
            "keys": [{"key_id": k.key_id, "secret": base64.b64encode(k.secret).decode()} for k in keys.keys]}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_exported(path: Path) -> ChannelKeys:
    """The bank's side: its keys from the file :func:`export` wrote."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return ChannelKeys(data["bank_id"], tuple(ChannelKey(k["key_id"], base64.b64decode(k["secret"]))
                                                  for k in data["keys"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a bank HTTP channel key file") from None


__all__ = ["KEY_BYTES", "export", "load", "load_exported", "retire", "rotate"]
