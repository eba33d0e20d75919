"""Unit tests of infra/crypto (the envelope, batch signatures, keys, tokens, Merkle paths, pseudonyms, sealing at rest)."""
