"""Process-global metadata caches: listings and format indexes.

One :class:`MetadataCache` per process (see :func:`get_cache`) remembers

* **listings** of prefixes, for ``listing_ttl`` seconds (``refresh()`` forgets them);
* **format indexes** (Parquet footers and row-group extents, TFRecord record offsets, NPZ
  member tables, HDF5 chunk maps...), keyed by the object's URI, size and etag/mtime plus
  the format and the options that shape the index, so a rewritten object is never served a
  stale index.

Worker processes forked from a process that has filled the cache share its pages; the
second epoch in a process makes no metadata request at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..options import DOCUMENTED_OPTIONS, OptionsBase, _opt
from ..storage import ObjectInfo, Store


@dataclass(frozen=True)
class CacheOptions(OptionsBase):
    """The process-global metadata cache."""

    listing_ttl: float = _opt(300.0, "Seconds a cached listing of a prefix is trusted before listing again.")
    max_indexes: int = _opt(1_000_000, "Most format indexes kept in memory per process (least recently used go).")


DOCUMENTED_OPTIONS.append(CacheOptions)


class MetadataCache:
    """Listings and format indexes of one process. Thread-safe."""

    def __init__(self, options: CacheOptions | None = None) -> None:
        self.options = options or CacheOptions.from_env()
        self._lock = threading.Lock()
        self._listings: dict[tuple[str, str, str | None, str | None], tuple[float, list[ObjectInfo]]] = {}
        self._indexes: dict[tuple[str, int, str | None, float | None, str], Any] = {}
        self.hits = 0
        self.misses = 0

    def list(
        self, store: Store, prefix: str, *, pattern: str | None = None, regex: str | None = None
    ) -> list[ObjectInfo]:
        """``store.list(prefix, pattern=, regex=)``, served from memory within the listing TTL."""
        key = (repr(store), prefix, pattern, regex)
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(key)
            if cached is not None and now - cached[0] <= self.options.listing_ttl:
                self.hits += 1
                return cached[1]
        objects = store.list(prefix, pattern=pattern, regex=regex)
        with self._lock:
            self.misses += 1
            self._listings[key] = (now, objects)
        return objects

    def index(self, info: ObjectInfo, kind: str, build: Callable[[], Any]) -> Any:
        """The index of the object ``info`` describes, built with ``build()`` on a miss.

        ``kind`` names the format and every option that changes the index (two readers
        with different options never share an index).
        """
        key = (info.uri, info.size, info.etag, None if info.etag else info.mtime, kind)
        with self._lock:
            found = self._indexes.get(key)
            if found is not None:
                self.hits += 1
                return found
        built = build()
        with self._lock:
            self.misses += 1
            if len(self._indexes) >= self.options.max_indexes:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[key] = built
        return built

    def refresh(self, prefix: str | None = None) -> None:
        """Forget cached listings (all, or those under ``prefix``) and the indexes under it."""
        with self._lock:
            if prefix is None:
                self._listings.clear()
                self._indexes.clear()
                return
            for key in [k for k in self._listings if k[1].startswith(prefix)]:
                del self._listings[key]
            for ikey in [k for k in self._indexes if k[0].startswith(prefix)]:
                del self._indexes[ikey]


_cache: MetadataCache | None = None
_cache_lock = threading.Lock()


def get_cache() -> MetadataCache:
    """This process's metadata cache (created on first use)."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = MetadataCache()
    return _cache


__all__ = ["CacheOptions", "MetadataCache", "get_cache"]
