"""Merkle audit paths at their edges: an index one past the tree, a path of exactly the longest length, and
the refusal of an empty tree.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when a bound of
infra/crypto/merkle.py moves by one.
"""

from __future__ import annotations

import pytest

from infra.crypto import merkle


def test_an_index_one_past_the_last_leaf_leads_nowhere():
    """A one-leaf tree's root is its leaf: claiming index 1 of 1 with an empty path must not reach it."""
    leaf = merkle.leaf_hash(b"only")
    assert merkle.root_from_path(leaf, 0, 1, []) == leaf
    assert merkle.root_from_path(leaf, 1, 1, []) is None
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(4)]
    _, paths = merkle.build(leaves)
    assert merkle.root_from_path(leaves[3], 4, 4, paths[3]) is None


def test_a_path_of_exactly_the_longest_length_is_followed():
    leaf = merkle.leaf_hash(b"x")
    root = merkle.root_from_path(leaf, 0, 2**40, [bytes(32)] * merkle.MAX_PATH)
    assert root is not None and len(root) == merkle.HASH_LEN
    assert merkle.root_from_path(leaf, 0, 2**41, [bytes(32)] * (merkle.MAX_PATH + 1)) is None


def test_an_empty_tree_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^a Merkle tree needs at least one leaf$"):
        merkle.build([])
