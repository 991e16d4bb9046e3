"""A compact, columnar table of objects: URIs, sizes, etags and modification times.

A listing of 10^7 objects held as 10^7 :class:`~s3dlio_loader.storage.ObjectInfo` tuples costs
gigabytes of Python objects, and every process that touches them (reference counts) copies
their pages. An :class:`ObjectTable` holds the same facts in five numpy arrays:

* ``uri_data`` (uint8) and ``uri_offsets`` (int64, ``n + 1``): the URIs after their common
  ``prefix``, concatenated as UTF-8;
* ``sizes`` (int64, ``-1`` when unknown), ``etags`` (fixed-width bytes, ``b""`` when none),
  ``mtimes`` (float64 seconds, NaN when unknown).

It behaves as a read-only sequence of ObjectInfo (``len``, ``table[i]``, iteration), and its
arrays can live in a memory-mapped cache file shared by every process.

>>> from s3dlio_loader.storage import ObjectInfo
>>> t = ObjectTable.from_infos([ObjectInfo("s3://b/d/a.npy", 10, "e1"), ObjectInfo("s3://b/d/b.npy", 20)])
>>> len(t), t.prefix, t[1]
(2, 's3://b/d/', ObjectInfo(uri='s3://b/d/b.npy', size=20, etag=None, mtime=None, is_dir=False))
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from ..storage import ObjectInfo
from .persist import new_token

#: Rows handled per step by the chunked (memory-bounded) array operations.
_CHUNK_ROWS = 1 << 18
_CHUNK_ELEMENTS = 1 << 22


class ObjectTable(Sequence[ObjectInfo]):
    """The objects of a dataset as columns (see the module docstring).

    Attributes:
        prefix: the common prefix of every URI (stripped from ``uri_data``).
        token: identifies this version of the table; a cache file keeps the token of the
            table it was written from, so "same token" means "same content" without a compare.
    """

    def __init__(
        self,
        prefix: str,
        uri_data: np.ndarray,
        uri_offsets: np.ndarray,
        sizes: np.ndarray,
        etags: np.ndarray,
        mtimes: np.ndarray,
        *,
        token: str | None = None,
    ) -> None:
        n = int(sizes.shape[0])
        if uri_offsets.shape != (n + 1,) or etags.shape != (n,) or mtimes.shape != (n,):
            raise ValueError(
                f"ObjectTable columns disagree: {n} sizes, {uri_offsets.shape[0]} uri offsets, "
                f"{etags.shape[0]} etags, {mtimes.shape[0]} mtimes"
            )
        if etags.dtype.kind != "S":
            raise ValueError(f"etags must be a fixed-width bytes array (got dtype {etags.dtype})")
        self.prefix = prefix
        self.uri_data = uri_data
        self.uri_offsets = uri_offsets
        self.sizes = sizes
        self.etags = etags
        self.mtimes = mtimes
        self.token = token or new_token()
        self._digest: str | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_infos(cls, infos: Iterable[ObjectInfo]) -> ObjectTable:
        """A table of ``infos`` (ObjectInfo, or anything with uri/size/etag/mtime), in that order."""
        uris: list[str] = []
        sizes: list[int] = []
        etags: list[str] = []
        mtimes: list[float] = []
        for o in infos:
            uris.append(o.uri)
            sizes.append(o.size)
            etags.append(o.etag or "")
            mtimes.append(math.nan if o.mtime is None else float(o.mtime))
        return cls.from_columns(uris, sizes, etags, mtimes)

    @classmethod
    def from_columns(
        cls,
        uris: Sequence[str],
        sizes: Sequence[int] | np.ndarray | None = None,
        etags: Sequence[str | None] | np.ndarray | None = None,
        mtimes: Sequence[float | None] | np.ndarray | None = None,
    ) -> ObjectTable:
        """A table from parallel columns (``sizes`` -1, ``etags`` None/"" and ``mtimes`` None/NaN for unknown)."""
        n = len(uris)
        uri_list = list(uris)
        prefix = common_prefix(min(uri_list), max(uri_list)) if n else ""
        cut = len(prefix)
        rel = [u[cut:] for u in uri_list] if cut else uri_list
        joined = "".join(rel)
        data = joined.encode("utf-8")
        if len(data) == len(joined):  # ASCII: byte lengths are string lengths
            lengths = np.fromiter(map(len, rel), dtype=np.int64, count=n)
        else:
            lengths = np.fromiter((len(s.encode("utf-8")) for s in rel), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        size_arr = np.full(n, -1, dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
        if mtimes is None:
            mtime_arr = np.full(n, np.nan)
        else:
            mtime_arr = np.array([math.nan if m is None else m for m in mtimes], dtype=np.float64) \
                if not isinstance(mtimes, np.ndarray) else mtimes.astype(np.float64)  # fmt: skip
        if size_arr.shape != (n,) or mtime_arr.shape != (n,):
            raise ValueError(f"ObjectTable.from_columns: {n} uris but {size_arr.shape[0]} sizes / "
                             f"{mtime_arr.shape[0]} mtimes")  # fmt: skip
        return cls(prefix, np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8), offsets,
                   size_arr, _etag_array(etags, n), mtime_arr)  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, token: str | None, *,
                    name: str = "t") -> ObjectTable:  # fmt: skip
        """The table stored under ``name.*`` in ``arrays`` (see :meth:`arrays`)."""
        return cls(prefix, arrays[f"{name}.uri_data"], arrays[f"{name}.uri_offsets"], arrays[f"{name}.sizes"],
                   arrays[f"{name}.etags"], arrays[f"{name}.mtimes"], token=token)  # fmt: skip

    def arrays(self, name: str = "t") -> dict[str, np.ndarray]:
        """The columns keyed ``name.<column>``, for a cache file."""
        return {
            f"{name}.uri_data": self.uri_data,
            f"{name}.uri_offsets": self.uri_offsets,
            f"{name}.sizes": self.sizes,
            f"{name}.etags": self.etags,
            f"{name}.mtimes": self.mtimes,
        }

    def with_versions(self, rows: np.ndarray, infos: Sequence[ObjectInfo]) -> ObjectTable:
        """A copy where ``rows`` take the size, etag and mtime of ``infos`` (URIs unchanged)."""
        sizes = np.array(self.sizes, dtype=np.int64)
        mtimes = np.array(self.mtimes, dtype=np.float64)
        new_etags = [o.etag or "" for o in infos]
        width = max([self.etags.dtype.itemsize, *(len(e.encode()) for e in new_etags)])
        etags = self.etags.astype(f"S{width}")
        for r, o, e in zip(rows.tolist(), infos, new_etags, strict=True):
            sizes[r] = o.size
            etags[r] = e.encode()
            mtimes[r] = math.nan if o.mtime is None else o.mtime
        return ObjectTable(self.prefix, self.uri_data, self.uri_offsets, sizes, etags, mtimes)

    # ------------------------------------------------------------------ sequence

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @overload
    def __getitem__(self, i: int) -> ObjectInfo: ...

    @overload
    def __getitem__(self, i: slice) -> list[ObjectInfo]: ...

    def __getitem__(self, i: int | slice) -> ObjectInfo | list[ObjectInfo]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"object {i} out of range ({n} objects)")
        e = self.etags[j]
        m = float(self.mtimes[j])
        return ObjectInfo(self.uri(j), int(self.sizes[j]), e.decode() if e else None, None if m != m else m)

    def __iter__(self) -> Iterator[ObjectInfo]:
        for j in range(len(self)):
            yield self[j]

    def uri(self, i: int) -> str:
        """The URI of object ``i``."""
        a, b = int(self.uri_offsets[i]), int(self.uri_offsets[i + 1])
        return self.prefix + self.uri_data[a:b].tobytes().decode("utf-8")

    def uris(self) -> list[str]:
        """Every URI, in order (a list of ``len(self)`` strings: use on small tables)."""
        raw = self.uri_data.tobytes()
        text = raw.decode("utf-8")
        off = self.uri_offsets.tolist()
        p = self.prefix
        if len(text) == len(raw):
            return [p + text[a:b] for a, b in itertools.pairwise(off)]
        return [p + raw[a:b].decode("utf-8") for a, b in itertools.pairwise(off)]

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return int(sum(a.nbytes for a in (self.uri_data, self.uri_offsets, self.sizes, self.etags, self.mtimes)))

    # ------------------------------------------------------------------ comparison

    def digest(self) -> str:
        """A digest of the URIs (in order), independent of sizes and versions."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=20)
            h.update(self.prefix.encode())
            h.update(b"\x00")
            h.update(np.ascontiguousarray(self.uri_offsets - self.uri_offsets[0]).data)
            h.update(np.ascontiguousarray(self.uri_data).data)
            self._digest = h.hexdigest()
        return self._digest

    def same_uris(self, other: ObjectTable) -> bool:
        """True when both tables list the same URIs in the same order."""
        return (
            len(self) == len(other)
            and self.prefix == other.prefix
            and np.array_equal(self.uri_offsets, other.uri_offsets)
            and np.array_equal(self.uri_data, other.uri_data)
        )

    def match(self, old: ObjectTable) -> np.ndarray:
        """For each object of this table, its row in ``old`` when it is the same version there, else -1.

        "Same version": same URI and size, and the same etag when both have one, else the
        same modification time when both have one; an object with neither is never matched
        (it cannot be told apart from a rewritten one).
        """
        n = len(self)
        if self.same_uris(old):
            rows = np.arange(n, dtype=np.int64)
        else:
            where = {u: k for k, u in enumerate(old.uris())}
            rows = np.fromiter((where.get(u, -1) for u in self.uris()), dtype=np.int64, count=n)
        found = rows >= 0
        safe = np.where(found, rows, 0)
        if len(old) == 0:
            return np.full(n, -1, dtype=np.int64)
        same = found & (self.sizes == old.sizes[safe])
        mine, theirs = self.etags, old.etags[safe]
        both_etag = (mine != b"") & (theirs != b"")
        etag_eq = mine == theirs
        m1, m2 = self.mtimes, old.mtimes[safe]
        mtime_ok = ~np.isnan(m1) & ~np.isnan(m2) & (m1 == m2)
        same &= np.where(both_etag, etag_eq, mtime_ok)
        return np.where(same, rows, -1)

    def identical(self, other: ObjectTable) -> bool:
        """Same URIs, sizes, etags and mtimes, in the same order."""
        return (
            self.same_uris(other)
            and np.array_equal(self.sizes, other.sizes)
            and np.array_equal(self.etags, other.etags)
            and np.array_equal(self.mtimes, other.mtimes, equal_nan=True)
        )

    def versions_equal(self, other: ObjectTable) -> bool:
        """Same URIs in the same order and every object matched (see :meth:`match`)."""
        return self.same_uris(other) and bool(np.all(self.match(other) >= 0))

    def __repr__(self) -> str:
        return f"ObjectTable({len(self)} objects under {self.prefix!r}, {self.nbytes} bytes)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.prefix, np.asarray(self.uri_data), np.asarray(self.uri_offsets),
                           np.asarray(self.sizes), np.asarray(self.etags), np.asarray(self.mtimes), self.token))


def _rebuild(prefix: str, uri_data: np.ndarray, uri_offsets: np.ndarray, sizes: np.ndarray, etags: np.ndarray,
             mtimes: np.ndarray, token: str) -> ObjectTable:  # fmt: skip
    return ObjectTable(prefix, uri_data, uri_offsets, sizes, etags, mtimes, token=token)


def _etag_array(etags: Sequence[str | None] | np.ndarray | None, n: int) -> np.ndarray:
    if etags is None:
        return np.zeros(n, dtype="S1")
    if isinstance(etags, np.ndarray) and etags.dtype.kind == "S":
        out = etags
    else:
        encoded = [(e or "").encode() for e in etags]
        width = max([1, *map(len, encoded)])
        out = np.array(encoded, dtype=f"S{width}") if n else np.zeros(0, dtype="S1")
    if out.shape != (n,):
        raise ValueError(f"ObjectTable: {n} uris but {out.shape[0]} etags")
    return out


def common_prefix(a: str, b: str) -> str:
    """The longest common leading substring of ``a`` and ``b`` (character by character, not by path part).

    The common prefix of the smallest and largest of many strings is common to all of them.
    """
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return a[:k]


def ragged_take(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments ``data[offsets[r]:offsets[r + 1]]`` of ``rows``, concatenated, and their offsets.

    Works in bounded memory (chunks of rows), without a Python loop over rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    out = np.empty(int(new_offsets[-1]), dtype=data.dtype)
    a = 0
    while a < len(rows):
        # a chunk of rows holding at most _CHUNK_ELEMENTS elements (or one row), so that the
        # gather index below stays small
        b = int(np.searchsorted(new_offsets, new_offsets[a] + _CHUNK_ELEMENTS, side="right")) - 1
        b = max(a + 1, min(b, a + _CHUNK_ROWS, len(rows)))
        lo, hi = int(new_offsets[a]), int(new_offsets[b])
        if hi > lo:
            if b - a == 1 or np.all(starts[a + 1 : b] == starts[a : b - 1] + lengths[a : b - 1]):  # contiguous
                s = int(starts[a])
                out[lo:hi] = data[s : s + (hi - lo)]
            else:
                idx = np.repeat(starts[a:b] - new_offsets[a:b], lengths[a:b]) + np.arange(lo, hi, dtype=np.int64)
                out[lo:hi] = data[idx]
        a = b
    return out, new_offsets


__all__ = ["ObjectTable", "common_prefix", "ragged_take"]
