"""Tests for gateway.merkle: RFC 6962 vectors, exhaustive small trees, large random
trees, tampering, and the O(log n) node-read bound of proof generation.

The reference ("naive") tree below is written straight from the RFC 6962 §2.1
recursive definitions with hashlib, independently of the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "rfc6962"
TESTDATA = VECTORS / "testdata"

Store = dict[tuple[int, int], bytes]

# --------------------------------------------------------------------------- reference tree


def _largest_pow2_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class NaiveTree:
    """RFC 6962 §2.1 MTH / PATH / SUBPROOF, recursive and memoized, over leaf hashes.

    Proof entries carry the side of the sibling ("L" = hashed on the left of the
    running value, "R" = on the right, "T" = SUBPROOF's terminal subtree) so a
    proof's *shape* can be compared independently of the hashes.
    """

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.leaves = leaf_hashes
        self.memo: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        key = (lo, hi)
        if key in self.memo:
            return self.memo[key]
        n = hi - lo
        if n == 0:
            h = hashlib.sha256(b"").digest()
        elif n == 1:
            h = self.leaves[lo]
        else:
            k = _largest_pow2_below(n)
            h = hashlib.sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()
        self.memo[key] = h
        return h

    def path(self, m: int, lo: int, hi: int) -> list[tuple[str, bytes]]:
        n = hi - lo
        if n == 1:
            return []
        k = _largest_pow2_below(n)
        if m < k:
            return [*self.path(m, lo, lo + k), ("R", self.mth(lo + k, hi))]
        return [*self.path(m - k, lo + k, hi), ("L", self.mth(lo, lo + k))]

    def subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[tuple[str, bytes]]:
        n = hi - lo
        if m == n:
            return [] if whole else [("T", self.mth(lo, hi))]
        k = _largest_pow2_below(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, whole), ("R", self.mth(lo + k, hi))]
        return [*self.subproof(m - k, lo + k, hi, False), ("L", self.mth(lo, lo + k))]

    # Convenience wrappers over the whole tree [0, size).
    def inclusion(self, index: int, size: int) -> list[bytes]:
        return [h for _, h in self.path(index, 0, size)]

    def consistency(self, old: int, new: int) -> list[bytes]:
        return [h for _, h in self.subproof(old, 0, new, True)]


def _path_shape(index: int, size: int) -> list[str]:
    """Sides of the RFC 6962 audit path (hash-free; uses a tree of dummy leaves)."""
    return [side for side, _ in _SHAPE_TREE.path(index, 0, size)]


def _subproof_shape(old: int, new: int) -> list[str]:
    return [side for side, _ in _SHAPE_TREE.subproof(old, 0, new, True)]


_SHAPE_TREE = NaiveTree([b"\x00" * 32] * 512)

# --------------------------------------------------------------------------- helpers


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(8, "big")) for i in range(n)]


def _build(leaf_hashes: list[bytes]) -> tuple[Store, list[bytes]]:
    """Store filled by CompactRange.append, and the root after each append (roots[s])."""
    cr = CompactRange()
    store: Store = {}
    roots = [cr.root()]
    for h in leaf_hashes:
        for level, index, node in cr.append(h):
            assert (level, index) not in store
            store[(level, index)] = node
        roots.append(cr.root())
    return store, roots


def _getter(store: Store) -> Callable[[int, int], bytes]:
    return lambda level, index: store[(level, index)]


class Reader:
    """get_node over a store that refuses nodes outside [0, size) and counts reads."""

    def __init__(self, lookup: Callable[[int, int], bytes], size: int) -> None:
        self.lookup = lookup
        self.size = size
        self.reads = 0

    def __call__(self, level: int, index: int) -> bytes:
        assert level >= 0
        assert index >= 0
        assert (index + 1) << level <= self.size, f"read ({level}, {index}) beyond {self.size}"
        self.reads += 1
        return self.lookup(level, index)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


def _read_bound(size: int) -> float:
    return 2 * math.log2(size) + 2


# --------------------------------------------------------------------------- hashing and roots


def test_hash_primitives() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert issubclass(ProofError, ValueError)


def test_roots_json() -> None:
    data = json.loads((VECTORS / "roots.json").read_text())
    leaves = [leaf_hash(bytes.fromhex(x)) for x in data["leaf_inputs_hex"]]
    want = [bytes.fromhex(x) for x in data["root_hashes_by_size_hex"]]
    assert len(want) == 9
    store, roots = _build(leaves)
    naive = NaiveTree(leaves)
    for size, root in enumerate(want):
        assert root_from_leaf_hashes(leaves[:size]) == root
        assert naive.mth(0, size) == root
        assert roots[size] == root
        assert root_at(size, Reader(_getter(store), size)) == root
        assert CompactRange.from_store(size, Reader(_getter(store), size)).root() == root
    assert want[0] == EMPTY_ROOT


# --------------------------------------------------------------------------- vector files


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _vector_files(kind: str) -> list[Path]:
    return sorted((TESTDATA / kind).rglob("*.json"))


def _vid(path: Path) -> str:
    return path.relative_to(TESTDATA).as_posix()


INCLUSION_FILES = _vector_files("inclusion")
CONSISTENCY_FILES = _vector_files("consistency")


def test_vector_files_present() -> None:
    # Guards against an empty parametrization silently passing.
    assert len(INCLUSION_FILES) == 98
    assert len(CONSISTENCY_FILES) == 98


def _load(path: Path) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(path.read_text())
    d["proof"] = [_b64(x) for x in d["proof"] or []]
    return d


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_vid)
def test_inclusion_vector(path: Path) -> None:
    d = _load(path)
    args = (_b64(d["leafHash"]), d["leafIdx"], d["treeSize"], d["proof"], _b64(d["root"]))
    if d["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_vid)
def test_consistency_vector(path: Path) -> None:
    d = _load(path)
    args = (d["size1"], d["size2"], d["proof"], _b64(d["root1"]), _b64(d["root2"]))
    if d["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_generator_reproduces_vector_proofs() -> None:
    """Our proofs over the roots.json leaves equal the upstream happy-path proofs."""
    data = json.loads((VECTORS / "roots.json").read_text())
    leaves = [leaf_hash(bytes.fromhex(x)) for x in data["leaf_inputs_hex"]]
    roots = [bytes.fromhex(x) for x in data["root_hashes_by_size_hex"]]
    store, _ = _build(leaves)
    checked = 0
    for path in INCLUSION_FILES:
        d = _load(path)
        if d["wantErr"] or _b64(d["leafHash"]) != leaves[d["leafIdx"]]:
            continue
        size = d["treeSize"]
        assert _b64(d["root"]) == roots[size]
        assert inclusion_proof(d["leafIdx"], size, Reader(_getter(store), size)) == d["proof"]
        checked += 1
    for path in CONSISTENCY_FILES:
        d = _load(path)
        if d["wantErr"] or _b64(d["root1"]) != roots[d["size1"]]:
            continue
        size1, size2 = d["size1"], d["size2"]
        assert _b64(d["root2"]) == roots[size2]
        assert consistency_proof(size1, size2, Reader(_getter(store), size2)) == d["proof"]
        checked += 1
    assert checked == 10  # 5 inclusion + 5 consistency happy paths


# --------------------------------------------------------------------------- exhaustive small trees

SMALL = 64
SMALL_LEAVES = _leaves(SMALL + 80)
SMALL_STORE, SMALL_ROOTS = _build(SMALL_LEAVES)
SMALL_NAIVE = NaiveTree(SMALL_LEAVES)


def test_append_emits_exactly_the_perfect_nodes() -> None:
    cr = CompactRange()
    seen: Store = {}
    for s, h in enumerate(SMALL_LEAVES, start=1):
        created = cr.append(h)
        assert created[0] == (0, s - 1, h)
        # levels strictly increase; each new node ends exactly at leaf s.
        assert [lvl for lvl, _, _ in created] == list(range(len(created)))
        for level, index, node in created:
            assert (index + 1) << level == s
            assert node == SMALL_NAIVE.mth(index << level, (index + 1) << level)
            seen[(level, index)] = node
        assert cr.size == s
        assert cr.root() == SMALL_NAIVE.mth(0, s)
        # every aligned perfect subtree inside [0, s), and nothing else
        assert len(seen) == 2 * s - s.bit_count()
    assert CompactRange().root() == EMPTY_ROOT
    assert CompactRange().size == 0


@pytest.mark.parametrize("size", range(1, SMALL + 1))
def test_generated_proofs_small(size: int) -> None:
    root = SMALL_NAIVE.mth(0, size)
    assert SMALL_ROOTS[size] == root
    assert root_from_leaf_hashes(SMALL_LEAVES[:size]) == root
    assert root_at(size, Reader(_getter(SMALL_STORE), size)) == root
    for index in range(size):
        get = Reader(_getter(SMALL_STORE), size)
        proof = inclusion_proof(index, size, get)
        assert get.reads <= _read_bound(size)
        assert proof == SMALL_NAIVE.inclusion(index, size)
        verify_inclusion(SMALL_LEAVES[index], index, size, proof, root)
        assert root_from_inclusion_proof(SMALL_LEAVES[index], index, size, proof) == root
    for old in range(1, size + 1):
        get = Reader(_getter(SMALL_STORE), size)
        proof = consistency_proof(old, size, get)
        assert get.reads <= _read_bound(size)
        assert proof == SMALL_NAIVE.consistency(old, size)
        old_root = SMALL_NAIVE.mth(0, old)
        verify_consistency(old, size, proof, old_root, root)
        assert root_from_consistency_proof(old, size, proof, old_root) == root


@pytest.mark.parametrize("size", range(SMALL + 1))
def test_rebuild_and_resume(size: int) -> None:
    get = Reader(_getter(SMALL_STORE), size)
    cr = CompactRange.from_store(size, get)
    assert get.reads == size.bit_count()
    assert cr.size == size
    assert cr.root() == SMALL_NAIVE.mth(0, size)
    # Continue appending into a copy of the store truncated to `size` leaves.
    store = {(lvl, i): h for (lvl, i), h in SMALL_STORE.items() if (i + 1) << lvl <= size}
    for s in range(size, len(SMALL_LEAVES)):
        for level, index, node in cr.append(SMALL_LEAVES[s]):
            assert SMALL_STORE[(level, index)] == node
            store[(level, index)] = node
        assert cr.root() == SMALL_NAIVE.mth(0, s + 1)
    assert store == SMALL_STORE


def test_subtree_root_all_valid_ranges() -> None:
    n = len(SMALL_LEAVES)
    for start in range(n):
        for end in range(start + 1, n + 1):
            top = 1 << ((end - start).bit_length() - 1)
            if start % top:
                with pytest.raises(ValueError):
                    subtree_root(start, end, _getter(SMALL_STORE))
            else:
                get = Reader(_getter(SMALL_STORE), end)
                assert subtree_root(start, end, get) == SMALL_NAIVE.mth(start, end)
                assert get.reads == (end - start).bit_count()


# --------------------------------------------------------------------------- large random trees


@pytest.mark.parametrize("size", [1000, 1024, 1025, 4097, 65536, 100_000])
def test_large_random_tree(size: int) -> None:
    rng = random.Random(size)
    leaves = _leaves(size, salt=b"large")
    store, _ = _build(leaves)  # roots list unused; the final root is checked below
    naive = NaiveTree(leaves)
    root = naive.mth(0, size)
    assert root_from_leaf_hashes(leaves) == root
    assert root_at(size, _getter(store)) == root

    indexes = {0, size - 1, size // 2, *rng.sample(range(size), 25)}
    for index in sorted(indexes):
        get = Reader(_getter(store), size)
        proof = inclusion_proof(index, size, get)
        assert get.reads <= _read_bound(size)
        assert proof == naive.inclusion(index, size)
        verify_inclusion(leaves[index], index, size, proof, root)

    olds = {1, size - 1, size, 1 << (size.bit_length() - 1), *rng.sample(range(1, size), 12)}
    for old in sorted(olds):
        get = Reader(_getter(store), size)
        proof = consistency_proof(old, size, get)
        assert get.reads <= _read_bound(size)
        assert proof == naive.consistency(old, size)
        verify_consistency(old, size, proof, naive.mth(0, old), root)
        resumed = CompactRange.from_store(old, Reader(_getter(store), old))
        assert resumed.root() == naive.mth(0, old)


# --------------------------------------------------------------------------- node-read bound


def _synthetic(level: int, index: int) -> bytes:
    return hashlib.sha256(f"{level}/{index}".encode()).digest()


@pytest.mark.parametrize(
    "size", [*range(1, 140), 1000, 2**16 - 1, 2**16, 2**16 + 1, 10**6 + 7, 2**40 + 12345]
)
def test_proof_generation_reads_log_nodes(size: int) -> None:
    """Proof generation reads <= 2*log2(size)+2 nodes, all inside [0, size).

    The store is synthetic (hashes need not be consistent), so huge sizes are free.
    """
    rng = random.Random(size)
    if size < 140:
        indexes: list[int] = list(range(size))
        olds: list[int] = list(range(1, size + 1))
    else:
        edges = [0, 1, size - 2, size - 1, size // 2, (1 << (size.bit_length() - 1)) - 1]
        indexes = edges + [rng.randrange(size) for _ in range(200)]
        olds = [max(1, e) for e in edges] + [size] + [rng.randrange(1, size) for _ in range(200)]
    for index in indexes:
        get = Reader(_synthetic, size)
        proof = inclusion_proof(index, size, get)
        assert get.reads <= _read_bound(size)
        assert len(proof) <= size.bit_length()
    for old in olds:
        get = Reader(_synthetic, size)
        consistency_proof(old, size, get)
        assert get.reads <= _read_bound(size)
    get = Reader(_synthetic, size)
    root_at(size, get)
    assert get.reads == size.bit_count()


# --------------------------------------------------------------------------- tampering

TAMPER_SIZES = range(1, 34)


@pytest.mark.parametrize("size", TAMPER_SIZES)
def test_tampered_inclusion_rejected(size: int) -> None:
    root = SMALL_ROOTS[size]
    get = _getter(SMALL_STORE)
    for index in range(size):
        leaf = SMALL_LEAVES[index]
        proof = inclusion_proof(index, size, get)
        verify_inclusion(leaf, index, size, proof, root)
        bad_proofs = [
            *([*proof[:j], _flip(h, 37 * j + index), *proof[j + 1 :]] for j, h in enumerate(proof)),
            proof[:-1],
            proof[1:],
            [*proof, root],
            [root, *proof],
            [*proof, b""],
        ]
        for bad in bad_proofs:
            if bad != proof:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, index, size, bad, root)
        for bad_leaf in (_flip(leaf, index), leaf[:-1], leaf + b"\x00", SMALL_LEAVES[size]):
            with pytest.raises(ProofError):
                verify_inclusion(bad_leaf, index, size, proof, root)
        for bad_root in (_flip(root, 5), EMPTY_ROOT, root[:-1], SMALL_ROOTS[size + 1]):
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, size, proof, bad_root)
        # Any other index (in range or not) is rejected: within one tree size the
        # proof shape (left/right sides) identifies the leaf.
        for bad_index in (-1, *range(size + 3), 2**64 - 1):
            if bad_index != index:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, bad_index, size, proof, root)
        # A different size is rejected unless it yields exactly the same proof
        # shape: then the verifier performs the identical computation and must
        # accept. (The size is only bound to the root by the signed tree head.)
        for bad_size in (0, *range(1, 2 * size + 3)):
            if bad_size == size:
                continue
            if index < bad_size and _path_shape(index, bad_size) == _path_shape(index, size):
                verify_inclusion(leaf, index, bad_size, proof, root)
            else:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, index, bad_size, proof, root)


@pytest.mark.parametrize("size", TAMPER_SIZES)
def test_tampered_consistency_rejected(size: int) -> None:
    root = SMALL_ROOTS[size]
    get = _getter(SMALL_STORE)
    for old in range(1, size + 1):
        old_root = SMALL_ROOTS[old]
        proof = consistency_proof(old, size, get)
        verify_consistency(old, size, proof, old_root, root)
        bad_proofs = [
            *([*proof[:j], _flip(h, 41 * j + old), *proof[j + 1 :]] for j, h in enumerate(proof)),
            proof[:-1],
            proof[1:],
            [*proof, root],
            [old_root, *proof],
            [*proof, b""],
            [*proof, *proof[-1:]],
        ]
        for bad in bad_proofs:
            if bad != proof:
                with pytest.raises(ProofError):
                    verify_consistency(old, size, bad, old_root, root)
        for bad_old_root in (_flip(old_root, 3), EMPTY_ROOT, old_root[:-1], SMALL_ROOTS[old - 1]):
            with pytest.raises(ProofError):
                verify_consistency(old, size, proof, bad_old_root, root)
        for bad_root in (_flip(root, 9), EMPTY_ROOT, root[1:], SMALL_ROOTS[size + 1]):
            with pytest.raises(ProofError):
                verify_consistency(old, size, proof, old_root, bad_root)
        if old != size:
            with pytest.raises(ProofError):
                verify_consistency(old, size, proof, root, old_root)  # swapped roots
        # Every other old size is rejected (the old size fixes where the proof starts).
        for bad_old in (-1, *range(size + 3)):
            if bad_old != old:
                with pytest.raises(ProofError):
                    verify_consistency(bad_old, size, proof, old_root, root)
        # A different new size: rejected unless the proof shape is identical (see
        # the inclusion test for why that case must verify).
        for bad_size in range(2 * size + 3):
            if bad_size == size:
                continue
            if bad_size >= old and _subproof_shape(old, bad_size) == _subproof_shape(old, size):
                verify_consistency(old, bad_size, proof, old_root, root)
            else:
                with pytest.raises(ProofError):
                    verify_consistency(old, bad_size, proof, old_root, root)


def test_every_bit_flip_rejected() -> None:
    size, index, old = 45, 27, 13
    get = _getter(SMALL_STORE)
    root, old_root = SMALL_ROOTS[size], SMALL_ROOTS[old]
    inc = inclusion_proof(index, size, get)
    con = consistency_proof(old, size, get)
    for j in range(len(inc)):
        for bit in range(256):
            bad = [*inc[:j], _flip(inc[j], bit), *inc[j + 1 :]]
            with pytest.raises(ProofError):
                verify_inclusion(SMALL_LEAVES[index], index, size, bad, root)
    for j in range(len(con)):
        for bit in range(256):
            bad = [*con[:j], _flip(con[j], bit), *con[j + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(old, size, bad, old_root, root)


# --------------------------------------------------------------------------- edge cases and errors


def test_consistency_edge_cases() -> None:
    r1, r2 = SMALL_ROOTS[1], SMALL_ROOTS[2]
    verify_consistency(1, 1, [], r1, r1)
    with pytest.raises(ProofError, match="equal"):
        verify_consistency(1, 1, [r1], r1, r1)
    with pytest.raises(ProofError):
        verify_consistency(1, 1, [], r1, r2)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 2, [], EMPTY_ROOT, r2)
    with pytest.raises(ProofError, match="<"):
        verify_consistency(2, 1, [], r2, r1)
    with pytest.raises(ProofError, match="empty consistency proof"):
        verify_consistency(1, 2, [], r1, r2)
    with pytest.raises(ProofError, match="length"):
        verify_consistency(1, 2, [r1, r2], r1, r2)
    proof34 = consistency_proof(3, 4, _getter(SMALL_STORE))
    with pytest.raises(ProofError, match="bytes"):
        verify_consistency(3, 4, [proof34[0][:31], *proof34[1:]], SMALL_ROOTS[3], SMALL_ROOTS[4])
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(3, 4, consistency_proof(3, 4, _getter(SMALL_STORE)), r1, r2)
    with pytest.raises(ProofError, match="new root"):
        verify_consistency(1, 2, consistency_proof(1, 2, _getter(SMALL_STORE)), r1, r1)


def test_inclusion_edge_cases() -> None:
    leaf, root = SMALL_LEAVES[0], SMALL_ROOTS[1]
    verify_inclusion(leaf, 0, 1, [], root)
    with pytest.raises(ProofError, match="out of range"):
        verify_inclusion(leaf, 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="out of range"):
        verify_inclusion(leaf, -1, 1, [], root)
    with pytest.raises(ProofError, match="leaf hash"):
        verify_inclusion(b"", 0, 1, [], root)
    with pytest.raises(ProofError, match="length"):
        verify_inclusion(leaf, 0, 1, [root], root)
    with pytest.raises(ProofError, match="bytes"):
        verify_inclusion(leaf, 0, 2, [b"y" * 33], SMALL_ROOTS[2])
    with pytest.raises(ProofError, match="expected root"):
        verify_inclusion(leaf, 0, 2, [SMALL_LEAVES[0]], SMALL_ROOTS[2])


def test_generation_input_errors() -> None:
    get = _getter(SMALL_STORE)
    for index, size in ((0, 0), (-1, 4), (4, 4)):
        with pytest.raises(ValueError, match="out of range"):
            inclusion_proof(index, size, get)
    for old, new in ((0, 0), (0, 5), (5, 4), (-1, 3)):
        with pytest.raises(ValueError, match="old_size"):
            consistency_proof(old, new, get)
    assert consistency_proof(7, 7, get) == []
    for start, end in ((3, 3), (5, 4), (-1, 2), (1, 3), (2, 6)):
        with pytest.raises(ValueError):
            subtree_root(start, end, get)
    with pytest.raises(ValueError):
        root_at(-1, get)
    assert root_at(0, get) == EMPTY_ROOT
    with pytest.raises(ValueError):
        CompactRange.from_store(-1, get)
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        root_from_leaf_hashes([b"short"])
    with pytest.raises(ValueError, match="store returned"):
        root_at(1, lambda level, index: b"bad")
