"""Merkle trees for batch signatures (RFC 9162 §2.1, the Certificate Transparency tree).

One Ed25519 signature over a tree root authenticates a whole batch; each
message carries its audit path (leaf index, leaf count, sibling hashes).
Leaves and interior nodes are domain-separated (``0x00`` / ``0x01`` prefixes)
so an interior node can never pass for a leaf. A tree of one leaf has an empty
path and its root is the leaf hash: a per-message signature is simply a batch
of one.
"""

from __future__ import annotations

from hashlib import sha256

HASH_LEN = 32
MAX_PATH = 40  # 2**40 leaves is far beyond any batch; bounds hostile input


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def build(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """``(root, paths)`` for leaf hashes ``leaves``; ``paths[i]`` runs from leaf ``i`` up to the root."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    paths: list[list[bytes]] = [[] for _ in leaves]
    return _build(leaves, 0, len(leaves), paths), paths


def _build(leaves: list[bytes], lo: int, hi: int, paths: list[list[bytes]]) -> bytes:
    n = hi - lo
    if n == 1:
        return leaves[lo]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    left = _build(leaves, lo, lo + k, paths)
    right = _build(leaves, lo + k, hi, paths)
    for i in range(lo, lo + k):
        paths[i].append(right)
    for i in range(lo + k, hi):
        paths[i].append(left)
    return node_hash(left, right)


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """The root an audit path leads to (RFC 9162 §2.1.3.2), or None if the path is ill-formed."""
    if not 0 <= index < size or len(path) > MAX_PATH:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0 or len(p) != HASH_LEN:
            return None
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
