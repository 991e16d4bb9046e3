"""Seeded bijections over ``range(n)`` that cost O(1) memory and map any position on its own.

A global shuffle of 10^7 samples needs no permutation array: position ``p`` of an epoch is
mapped to a sample by a small keyed Feistel network over the next power of two, with
cycle-walking to stay inside ``range(n)``. The same (seed, n) always gives the same order,
and any slice of the order can be computed without the rest, which is what makes resuming
mid-epoch and re-sharding for a different number of workers or ranks cheap.

>>> perm = FeistelPermutation(10, seed=3)
>>> sorted(perm.map(i) for i in range(10)) == list(range(10))
True
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_ROUNDS = 4


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed derived from several integers (seed, epoch, window...)."""
    h = 0x6A09E667F3BCC908
    for p in parts:
        h = _mix64(h ^ (int(p) & _MASK64))
    return h


class FeistelPermutation:
    """A seeded permutation of ``range(n)``; ``map(i)`` gives the element at position ``i``.

    Args:
        n: the size of the domain (0 allowed).
        seed: any integer; equal seeds give equal permutations.
    """

    __slots__ = ("_half_bits", "_half_mask", "_keys", "n")

    def __init__(self, n: int, seed: int) -> None:
        if n < 0:
            raise ValueError(f"permutation size must be >= 0 (got n={n})")
        self.n = n
        bits = max(2, (max(n, 1) - 1).bit_length())
        bits += bits & 1  # an even number of bits: two equal halves
        self._half_bits = bits // 2
        self._half_mask = (1 << self._half_bits) - 1
        self._keys = tuple(derive_seed(seed, r) for r in range(_ROUNDS))

    def _encrypt(self, x: int) -> int:
        hb, hm = self._half_bits, self._half_mask
        left, right = x >> hb, x & hm
        for key in self._keys:
            left, right = right, left ^ (_mix64(right ^ key) & hm)
        return (left << hb) | right

    def map(self, i: int) -> int:
        """The element at position ``i`` (0 <= i < n)."""
        if not 0 <= i < self.n:
            raise IndexError(f"position {i} outside a permutation of {self.n}")
        x = self._encrypt(i)
        while x >= self.n:  # cycle-walk: at most a few steps, the domain is < 4n
            x = self._encrypt(x)
        return x

    def map_many(self, positions: np.ndarray) -> np.ndarray:
        """``map`` over an array of positions, vectorised (int64 in, int64 out)."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.n):
            raise IndexError(f"positions outside a permutation of {self.n}")
        x = self._encrypt_many(pos.astype(np.uint64))
        n = np.uint64(self.n)
        outside = x >= n
        while outside.any():
            x[outside] = self._encrypt_many(x[outside])
            outside = x >= n
        return x.astype(np.int64)

    def _encrypt_many(self, x: np.ndarray) -> np.ndarray:
        hb = np.uint64(self._half_bits)
        hm = np.uint64(self._half_mask)
        left, right = x >> hb, x & hm
        for key in self._keys:
            left, right = right, left ^ (_mix64_array(right ^ np.uint64(key)) & hm)
        return (left << hb) | right


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """:func:`_mix64` over a uint64 array (numpy array arithmetic wraps modulo 2**64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
