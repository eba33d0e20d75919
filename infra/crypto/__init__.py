"""Cryptography: the envelope, keysets and the key directory, tokens, Merkle trees, sealing at rest.

Rule: imports ``infra.domain``, ``schemas`` and ``infra.core``; no Kafka, no SQL. The rest of Renkei calls
``seal`` / ``verify`` / ``open`` / ``forward`` here and never touches key bytes or nonces.
Layers and their allowed directions: docs/architecture.md.
"""
