"""Cryptography: the envelope, keysets and the key directory, tokens, Merkle trees, sealing at rest.

Rule: imports ``infra.domain``, ``schemas`` and ``infra.core``; no Kafka, no SQL. The rest of Renkei calls
``seal`` / ``verify`` / ``open`` / ``forward`` here and never touches key bytes or nonces.
Layers and their allowed directions: docs/architecture.md.

Its public names are its modules (``__all__``): import from them, e.g. ``from infra.crypto.envelope import …``
(``envelope`` gathers the primitives' public names: seal, verify, open, forward, legs, replay guard, wire). The package
re-exports nothing, so importing one module never loads the whole layer.
"""

__all__ = [
    "certificates",
    "envelope",
    "forward",
    "keys",
    "layout",
    "legs",
    "merkle",
    "open",
    "pseudonyms",
    "records_keys",
    "replay_guard",
    "seal",
    "sealing",
    "tokens",
    "verify",
    "wire",
]
