"""RFC 6962 / RFC 9162 Merkle tree: hashing, incremental appends, proofs, verification.

Tree hashes follow RFC 6962 §2.1 (SHA-256, 0x00 leaf prefix, 0x01 node prefix).

Storage model: a store keeps only *perfect* subtree hashes, addressed as
``get_node(level, index)`` = hash of the perfect subtree covering leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf hashes.
:class:`CompactRange` produces exactly these nodes as leaves are appended, and the
proof functions read O(log n) of them, computing the non-perfect subtrees on the
right edge of a tree from perfect ones.

Verification follows transparency-dev/merkle ``proof/verify.go`` (RFC 9162
§2.1.3.2 and §2.1.4.2) and raises :class:`ProofError` on any failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "GetNode",
    "ProofError",
    "border",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_at",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``."""


class ProofError(ValueError):
    """A Merkle proof, or the sizes and hashes given with it, failed verification."""


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH (RFC 6962 §2.1) of a list of leaf hashes, computed iteratively.

    Pairs nodes level by level, carrying an odd last node up unchanged; this is
    the same tree as splitting at the largest power of two below n.
    """
    for h in hashes:
        _check_hash(h, "leaf hash")
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        parents = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    return level[0]


# --------------------------------------------------------------------------- storage


def _read(get_node: GetNode, level: int, index: int) -> bytes:
    node = get_node(level, index)
    if len(node) != HASH_SIZE:
        raise ValueError(f"store returned {len(node)} bytes for node ({level}, {index})")
    return bytes(node)


def _perfect_ranges(start: int, end: int) -> Iterator[tuple[int, int]]:
    """(level, index) of the perfect subtrees tiling ``[start, end)``, left to right.

    Assumes ``start`` is a multiple of the largest power of two <= ``end - start``.
    """
    width = end - start
    pos = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            yield level, pos >> level
            pos += 1 << level


def border(size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees tiling ``[0, size)``: the nodes that proofs in
    any larger tree may need from that part of it."""
    return list(_perfect_ranges(0, size))


class CompactRange:
    """Right border of a tree of ``size`` leaves: its perfect subtree roots.

    Holds at most log2(size) + 1 hashes. ``append`` returns every perfect node it
    creates so that a store can persist them; ``from_store`` resumes from one.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._size = 0
        # (level, hash), left to right; levels strictly decrease.
        self._nodes: list[tuple[int, bytes]] = []

    @classmethod
    def from_store(cls, size: int, get_node: GetNode) -> CompactRange:
        """Rebuild the border of a stored tree of ``size`` leaves (popcount(size) reads)."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        cr = cls()
        cr._size = size
        cr._nodes = [
            (level, _read(get_node, level, index)) for level, index in _perfect_ranges(0, size)
        ]
        return cr

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf hash; return the new perfect nodes as (level, index, hash).

        The first entry is ``(0, old_size, leaf_hash)``; then one entry per subtree
        completed by this leaf, bottom-up.
        """
        _check_hash(leaf_hash, "leaf hash")
        index = self._size
        level, h = 0, bytes(leaf_hash)
        created = [(level, index, h)]
        while self._nodes and self._nodes[-1][0] == level:
            _, left = self._nodes.pop()
            h = node_hash(left, h)
            level += 1
            index >>= 1
            created.append((level, index, h))
        self._nodes.append((level, h))
        self._size += 1
        return created

    def root(self) -> bytes:
        """Root hash (MTH) of the current tree; ``EMPTY_ROOT`` when empty."""
        if not self._nodes:
            return EMPTY_ROOT
        h = self._nodes[-1][1]
        for _, left in reversed(self._nodes[:-1]):
            h = node_hash(left, h)
        return h


# --------------------------------------------------------------------------- proofs


def subtree_root(start: int, end: int, get_node: GetNode) -> bytes:
    """MTH of leaves ``[start, end)`` from stored perfect subtrees.

    The range must be an RFC 6962 subtree: ``0 <= start < end`` and ``start`` a
    multiple of the largest power of two <= ``end - start``. Reads
    popcount(end - start) nodes.
    """
    if not 0 <= start < end:
        raise ValueError(f"invalid subtree range [{start}, {end})")
    top = 1 << ((end - start).bit_length() - 1)
    if start % top:
        raise ValueError(f"[{start}, {end}) is not a Merkle subtree (start not aligned)")
    nodes = [_read(get_node, level, index) for level, index in _perfect_ranges(start, end)]
    h = nodes[-1]
    for left in reversed(nodes[:-1]):
        h = node_hash(left, h)
    return h


def root_at(size: int, get_node: GetNode) -> bytes:
    """Root hash of the stored tree's first ``size`` leaves (popcount(size) reads)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return EMPTY_ROOT if size == 0 else subtree_root(0, size, get_node)


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 6962 §2.1.1 audit path for leaf ``index`` in the tree of ``size`` leaves.

    Hashes are ordered bottom-up (leaf sibling first). O(log size) node reads.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree_root(lo + k, hi, get_node))
            hi = lo + k
        else:
            path.append(_read(get_node, k.bit_length() - 1, lo // k))
            lo += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, get_node: GetNode) -> list[bytes]:
    """RFC 6962 §2.1.2 consistency proof between tree sizes ``old_size <= new_size``.

    ``old_size`` must be > 0 (a proof from the empty tree is meaningless and the
    verifier rejects it). Equal sizes give ``[]``. O(log new_size) node reads.
    """
    if not 0 < old_size <= new_size:
        raise ValueError(f"need 0 < old_size <= new_size, got {old_size}, {new_size}")
    proof: list[bytes] = []
    lo, hi, whole = 0, new_size, True  # whole: [lo, hi) still starts at leaf 0 (RFC's b)
    while old_size != hi:
        k = _split(hi - lo)
        if old_size - lo <= k:
            proof.append(subtree_root(lo + k, hi, get_node))
            hi = lo + k
        else:
            proof.append(_read(get_node, k.bit_length() - 1, lo // k))
            lo += k
            whole = False
    if not whole:
        proof.append(subtree_root(lo, hi, get_node))
    proof.reverse()
    return proof


# --------------------------------------------------------------------------- verification


def _check_proof(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof[{i}] is {len(h)} bytes, want {HASH_SIZE}")


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split an inclusion proof for ``index`` < ``size`` into (inner, border) lengths."""
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Root implied by an inclusion proof for ``leaf_hash`` at ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} out of range for tree size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf_hash)} bytes, want {HASH_SIZE}")
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"wrong proof length {len(proof)}, want {inner + border}")
    _check_proof(proof)
    h = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border_right(h, proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is at ``index`` in the tree of ``size`` with ``root``."""
    if root_from_inclusion_proof(leaf_hash, index, size, proof) != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def root_from_consistency_proof(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes
) -> bytes:
    """Check ``proof`` against ``old_root`` and return the new root it implies.

    Requires ``0 < old_size <= new_size``; equal sizes need an empty proof.
    """
    if old_size < 0:
        raise ProofError(f"old size {old_size} is negative")
    if new_size < old_size:
        raise ProofError(f"new size {new_size} < old size {old_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if old_size == new_size:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        return old_root
    if not proof:
        raise ProofError("empty consistency proof")

    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    inner -= shift  # levels below `shift` lie inside one perfect old subtree
    # The proof starts with that subtree's hash, unless it is the whole old tree.
    if old_size == 1 << shift:
        seed, start = old_root, 0
    else:
        seed, start = proof[0], 1
    if len(proof) != start + inner + border:
        raise ProofError(f"wrong proof length {len(proof)}, want {start + inner + border}")
    _check_proof(proof)
    rest = proof[start:]
    mask = (old_size - 1) >> shift

    h1 = _chain_inner_right(seed, rest[:inner], mask)
    if _chain_border_right(h1, rest[inner:]) != old_root:
        raise ProofError("consistency proof does not match the old root")
    h2 = _chain_inner(seed, rest[:inner], mask)
    return _chain_border_right(h2, rest[inner:])


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends ``old_root``."""
    if root_from_consistency_proof(old_size, new_size, proof, old_root) != new_root:
        raise ProofError("consistency proof does not match the new root")
