"""A dataset's catalog: its object table, sample counts, sample starts and packed format indexes.

One :class:`Catalog` is what a :class:`~s3dlio_loader.engine.dataset.Dataset` needs to start:
which objects, how many samples each holds, where each object's samples begin, and each
object's format index. All of it is numpy arrays; when the cache persists, they are one
immutable, memory-mapped cache file that every process (forked workers, spawned workers,
other ranks on the node) maps read-only, so the memory is paid once.

A catalog remembers the token of the object table it was last checked against
(``source_token``): a dataset built again from the same listing reuses it without any
comparison; a new listing is compared object by object (URI, size, etag or mtime) and only
new or changed objects are indexed again (:meth:`Catalog.update`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import StorageError
from .packing import IndexPack, UnpackableError
from .persist import MappedArrays, new_token, open_arrays
from .table import ObjectTable

log = logging.getLogger(__name__)

#: ``build(rows) -> (indexes, counts)``: the format indexes and sample counts of table rows ``rows``.
BuildFn = Callable[[np.ndarray], tuple[Sequence[Any], np.ndarray]]


class Catalog:
    """Table, counts, starts and (optionally) packed indexes of one dataset (see the module docstring).

    Attributes:
        table: the objects (an :class:`~s3dlio_loader.cache.table.ObjectTable`).
        counts: samples of each object, int64 ``[n]``.
        starts: global id of each object's first sample, int64 ``[n + 1]`` (``starts[-1]`` is
            the number of samples).
        pack: the objects' format indexes, or None (indexes are then built when first read).
        token: identifies this version of the catalog.
        source_token: token of the object table this catalog was last found current for.
    """

    def __init__(
        self,
        table: ObjectTable,
        counts: np.ndarray,
        pack: IndexPack | None = None,
        *,
        starts: np.ndarray | None = None,
        token: str | None = None,
        source_token: str | None = None,
        mapped: MappedArrays | None = None,
    ) -> None:
        n = len(table)
        if counts.shape != (n,):
            raise ValueError(f"Catalog: {n} objects but {counts.shape[0]} counts")
        if starts is None:
            starts = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=starts[1:])
        self.table = table
        self.counts = counts
        self.starts = starts
        self.pack = pack
        self.token = token or new_token()
        self.source_token: str | None = source_token if source_token is not None else table.token
        self._mapped = mapped
        #: Indexes that could not be packed, by row (kept in this process's memory only).
        self.loose: dict[int, Any] = {}
        self._compatible: bool | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def path(self) -> str | None:
        """The cache file this catalog is mapped from (None when it lives in memory only)."""
        return self._mapped.path if self._mapped is not None else None

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (table, counts, starts, indexes)."""
        return self.table.nbytes + self.counts.nbytes + self.starts.nbytes + (self.pack.nbytes if self.pack else 0)

    def index(self, i: int) -> Any:
        """The format index of object ``i``, or None when the catalog holds none for it."""
        if self.pack is None:
            return self.loose.get(i)
        if self._compatible is None:
            # Checked on first use, not when mapped: that would import every format module at start-up.
            self._compatible = self.pack.compatible()
            if not self._compatible:
                log.warning("metadata cache: %s holds indexes of another layout of %s; they are rebuilt as "
                            "objects are read", self.path, self.pack.cls_path)  # fmt: skip
        if not self._compatible:
            return self.loose.get(i)
        return self.pack.get(i, self.table)

    # ------------------------------------------------------------------ updating

    def update(self, table: ObjectTable, build: BuildFn | None, counts: np.ndarray | None) -> Catalog:
        """This catalog brought up to date with ``table`` (itself when nothing changed).

        With ``counts`` given (known sample counts, no indexes), the result simply takes them.
        Otherwise objects of ``table`` that this catalog holds in the same version keep their
        index and count; the others are passed to ``build``.
        """
        return make_catalog(table, build, counts, old=self)

    # ------------------------------------------------------------------ persistence

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) for a cache file."""
        arrays = self.table.arrays("t")
        arrays["counts"] = self.counts
        arrays["starts"] = self.starts
        meta: dict[str, Any] = {"prefix": self.table.prefix, "table_token": self.table.token,
                                "source_token": self.source_token, "pack": None}  # fmt: skip
        if self.pack is not None:
            pack_meta, pack_arrays = self.pack.to_arrays("ix")
            meta["pack"] = pack_meta
            arrays.update(pack_arrays)
        return meta, arrays

    @classmethod
    def from_mapped(cls, m: MappedArrays) -> Catalog | None:
        """The catalog in a mapped cache file (None when the file holds no usable catalog)."""
        try:
            meta, arrays = m.meta, m.arrays
            table = ObjectTable.from_arrays(arrays, str(meta["prefix"]), str(meta["table_token"]), name="t")
            pack = IndexPack.from_arrays(meta["pack"], arrays, "ix") if meta.get("pack") else None
            return cls(table, arrays["counts"], pack, starts=arrays["starts"], token=m.token,
                       source_token=meta.get("source_token"), mapped=m)  # fmt: skip
        except (KeyError, ValueError, TypeError) as exc:
            log.debug("metadata cache: %s is not a catalog (%s)", m.path, exc)
            return None

    def __reduce__(self) -> tuple[Any, ...]:
        # A mapped catalog travels to spawned workers as its file name: they map the same pages.
        if self._mapped is not None:
            return (_open_catalog, (self._mapped.path, self.token, self.source_token))
        return (_rebuild_catalog, (self.table, np.asarray(self.counts), self.pack, np.asarray(self.starts),
                                   self.token, self.source_token))  # fmt: skip

    def __repr__(self) -> str:
        where = self.path or "memory"
        return (f"Catalog({len(self)} objects, {int(self.starts[-1])} samples, "
                f"{'indexed' if self.pack is not None else 'no indexes'}, {where})")  # fmt: skip


def _rebuild_catalog(table: ObjectTable, counts: np.ndarray, pack: IndexPack | None, starts: np.ndarray, token: str,
                     source_token: str | None) -> Catalog:  # fmt: skip
    return Catalog(table, counts, pack, starts=starts, token=token, source_token=source_token)


def _open_catalog(path: str, token: str, source_token: str | None) -> Catalog:
    m = open_arrays(path, shared_lock=True)
    cat = Catalog.from_mapped(m) if m is not None and m.token == token else None
    if cat is None:
        raise StorageError(
            "the metadata cache file of this dataset was removed or replaced since the dataset was built; "
            "build the Dataset again", uri=path, op="map",
        )  # fmt: skip
    cat.source_token = source_token
    return cat


def make_catalog(table: ObjectTable, build: BuildFn | None, counts: np.ndarray | None,
                 old: Catalog | None = None) -> Catalog:  # fmt: skip
    """A catalog of ``table``: counts given, or indexes from ``old`` where still valid and ``build`` for the rest.

    ``build`` None and ``counts`` None means one sample per object and no index (raw objects).
    """
    n = len(table)
    if counts is not None or build is None:
        known = np.ones(n, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        if old is not None and old.pack is None and np.array_equal(old.counts, known) and old.table.identical(table):
            old.source_token = table.token
            return old
        return Catalog(table, known)
    if old is not None and old.pack is not None and old.table.versions_equal(table):
        old.source_token = table.token
        return old
    if old is not None and old.pack is not None and not old.pack.compatible():
        old = None  # indexes of another layout of the index class: build everything again
    old_rows = table.match(old.table) if old is not None and old.pack is not None else np.full(n, -1, np.int64)
    if old is not None and old.pack is not None:
        valid = old_rows >= 0
        valid[valid] = old.pack.present[old_rows[valid]]
        old_rows = np.where(valid, old_rows, -1)
    reuse = np.flatnonzero(old_rows >= 0)
    need = np.flatnonzero(old_rows < 0)
    log.debug("metadata cache: %d objects reuse their index, %d are indexed", len(reuse), len(need))
    indexes, built_counts = build(need) if len(need) else ([], np.zeros(0, np.int64))
    out_counts = np.zeros(n, dtype=np.int64)
    if len(need):
        out_counts[need] = np.asarray(built_counts, dtype=np.int64)
    pack: IndexPack | None
    loose: dict[int, Any] = {}
    try:
        parts: list[tuple[np.ndarray, IndexPack]] = []
        if len(reuse):
            assert old is not None and old.pack is not None
            out_counts[reuse] = old.counts[old_rows[reuse]]
            parts.append((reuse, old.pack.take(old_rows[reuse])))
        if len(need):
            parts.append((need, IndexPack.build(indexes, [table[int(r)] for r in need])))
        pack = IndexPack.merge(n, parts, table) if parts else None
    except UnpackableError as exc:
        log.debug("metadata cache: indexes not packable (%s); they stay in this process's memory", exc)
        pack = None
        loose = {int(r): idx for r, idx in zip(need.tolist(), indexes, strict=True)}
        if len(reuse):
            assert old is not None
            loose.update({int(r): old.index(int(o)) for r, o in zip(reuse.tolist(), old_rows[reuse].tolist(),
                                                                     strict=True)})  # fmt: skip
    cat = Catalog(table, out_counts, pack)
    cat.loose = loose
    return cat


__all__ = ["BuildFn", "Catalog", "make_catalog"]
