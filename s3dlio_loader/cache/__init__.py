"""Process-global metadata caches: listings, object tables, format indexes, dataset catalogs.

One :class:`MetadataCache` per process (see :func:`get_cache`) remembers

* **listings** of prefixes as compact :class:`~s3dlio_loader.cache.table.ObjectTable`\\ s
  (URIs, sizes, etags, mtimes as numpy arrays), trusted for ``listing_ttl`` seconds
  (:meth:`MetadataCache.refresh` forgets them); the sizes/etags that ``stat`` returned for an
  explicit list of objects are kept the same way;
* **dataset catalogs** (:class:`~s3dlio_loader.cache.catalog.Catalog`): the object table, the
  sample count and first sample of every object, and every object's format index (Parquet
  footers and row-group extents, TFRecord record offsets, NPZ member tables, HDF5 chunk
  maps...) packed into flat arrays. A catalog entry is valid for an object only while its
  URI, size and etag (or mtime) are those the index was built from: an object rewritten in
  place is indexed again, the others are not;
* **manifests** read from storage, converted once to a table and trusted for ``listing_ttl``
  (then one ``stat`` tells whether the manifest changed);
* single **format indexes** by URI, size, etag/mtime and kind (:meth:`MetadataCache.index`).

With ``cache_persist`` (the default) all of it is also written to ``cache_dir`` (atomically:
temporary file + rename), so a new process starts without metadata requests: a listing
younger than ``listing_ttl`` is read from disk, an older one is listed again (one LIST per
prefix) and its etags and sizes validate every cached index. Cache files are mapped
read-only, so worker processes and other ranks on the machine share one copy of the arrays
(its pages in the page cache) instead of holding one copy each. Processes that start at the
same time take turns through file locks: one lists or indexes, the others then read its result.

>>> cache = get_cache()          # this process's cache, configured from S3DLIO_* variables
>>> # cache.refresh("s3://bucket/train/")   # forget the listings under a prefix
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..options import DOCUMENTED_OPTIONS, OptionsBase, _opt
from ..storage import ObjectInfo, Store
from .catalog import BuildFn, Catalog, make_catalog
from .persist import (
    SUFFIX,
    cache_key,
    default_cache_dir,
    exclusive_lock,
    open_arrays,
    read_meta,
    remove_unused,
    write_arrays,
    write_text_atomic,
)
from .table import ObjectTable

log = logging.getLogger(__name__)

#: Bump when the layout of cache files changes: older files are then ignored.
LAYOUT_VERSION = "v1"


@dataclass(frozen=True)
class CacheOptions(OptionsBase):
    """The process-global metadata cache (listings, object tables, format indexes)."""

    listing_ttl: float = _opt(
        300.0,
        "Seconds a listing of a prefix (or the stat results of an explicit object list) is trusted, "
        "in this process and, when persisted, in later ones; 0 lists every time.",
    )
    max_indexes: int = _opt(1_000_000, "Most single format indexes kept in memory per process (least recently "
                                       "used go); dataset catalogs are not counted.")  # fmt: skip
    cache_dir: str | None = _opt(
        None,
        "Directory of the persisted metadata cache (default: $XDG_CACHE_HOME/s3dlio-loader, else "
        "~/.cache/s3dlio-loader).",
    )
    cache_persist: bool = _opt(
        True,
        "Write listings, object tables and format indexes to cache_dir so that a new process starts without "
        "metadata requests and processes share them memory-mapped; 0 keeps them in this process's memory only.",
    )

    def __post_init__(self) -> None:
        if not self.listing_ttl >= 0:  # also rejects NaN
            raise ConfigError(f"CacheOptions.listing_ttl must be >= 0 seconds (got listing_ttl={self.listing_ttl!r})")
        if not isinstance(self.max_indexes, int) or self.max_indexes < 1:
            raise ConfigError(f"CacheOptions.max_indexes must be a positive integer (got {self.max_indexes!r})")

    @property
    def directory(self) -> str:
        """The cache directory in use (``cache_dir`` or the XDG default)."""
        return os.path.abspath(os.path.expanduser(self.cache_dir)) if self.cache_dir else default_cache_dir()


DOCUMENTED_OPTIONS.append(CacheOptions)

_IndexKey = tuple[str, int, "str | None", "float | None", str]


class _Timed:
    __slots__ = ("at", "table")

    def __init__(self, at: float, table: ObjectTable) -> None:
        self.at = at
        self.table = table


class _Manifest:
    __slots__ = ("at", "identity", "samples", "table")

    def __init__(self, at: float, table: ObjectTable, samples: np.ndarray | None, identity: list[Any]) -> None:
        self.at = at
        self.table = table
        self.samples = samples
        self.identity = identity


def _identity(info: ObjectInfo) -> list[Any]:
    """What tells two versions of an object apart: size, and the etag (else the mtime)."""
    return [info.size, info.etag, None if info.etag else info.mtime]


class MetadataCache:
    """Listings, stat results, manifests, catalogs and format indexes of one process. Thread-safe.

    Args:
        options: :class:`CacheOptions`; from ``S3DLIO_*`` environment variables when None.

    Attributes:
        hits, misses: lookups served from the cache (memory or disk) and lookups that had to
            ask storage or build an index.
    """

    def __init__(self, options: CacheOptions | None = None) -> None:
        self.options = options or CacheOptions.from_env()
        self._lock = threading.Lock()
        self._listings: dict[tuple[str, str, str | None, str | None], _Timed] = {}
        self._stats: dict[tuple[str, str, str], _Timed] = {}
        self._manifests: dict[tuple[str, str], _Manifest] = {}
        self._catalogs: dict[str, Catalog] = {}
        self._indexes: OrderedDict[_IndexKey, Any] = OrderedDict()
        self._warned = False
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def directory(self) -> str | None:
        """Where this cache persists (None when ``cache_persist`` is off)."""
        if not self.options.cache_persist:
            return None
        return os.path.join(self.options.directory, LAYOUT_VERSION)

    def _path(self, *parts: str) -> str | None:
        root = self.directory
        return None if root is None else os.path.join(root, *parts)

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def _disk_failed(self, what: str, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("metadata cache: cannot %s in %s (%s); continuing with the in-memory cache only",
                        what, self.directory, exc)  # fmt: skip
        else:
            log.debug("metadata cache: cannot %s: %s", what, exc)

    @contextlib.contextmanager
    def _turn(self, key: str) -> Iterator[None]:
        """Across processes, one at a time for ``key`` (no-op without persistence or locks)."""
        path = self._path("locks", key + ".lock")
        if path is None:
            yield
            return
        try:
            lock = exclusive_lock(path)
            lock.__enter__()
        except OSError as exc:
            self._disk_failed("take a lock", exc)
            yield
            return
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def _write(self, what: str, path: str, arrays: dict[str, np.ndarray], meta: dict[str, Any], token: str) -> bool:
        try:
            write_arrays(path, arrays, meta, token=token)
            return True
        except OSError as exc:
            self._disk_failed(f"write {what}", exc)
            return False

    # ------------------------------------------------------------------ listings

    def list_table(self, store: Store, prefix: str, *, pattern: str | None = None,
                   regex: str | None = None) -> ObjectTable:  # fmt: skip
        """``store.list(prefix, pattern=, regex=)`` as an :class:`ObjectTable`, cached for ``listing_ttl``.

        Served from memory, else from the persisted cache when the listing there is younger
        than the TTL, else listed (one LIST per prefix; processes listing the same prefix at
        the same time wait for the first one's result).
        """
        prefix = _canonical(prefix)  # "train/" names different data in different working directories
        ttl = self.options.listing_ttl
        mkey = (repr(store), prefix, pattern, regex)
        with self._lock:
            cached = self._listings.get(mkey)
            if cached is not None and time.monotonic() - cached.at <= ttl:
                self.hits += 1
                return cached.table
        fkey = cache_key("listing", *mkey)
        path = self._path("listings", fkey + SUFFIX)
        with self._turn(fkey):
            if path is not None and ttl > 0:
                found = self._read_timed(path, {"what": "listing", "store": mkey[0], "prefix": prefix,
                                                "pattern": pattern, "regex": regex})  # fmt: skip
                if found is not None:
                    self._count(True)
                    with self._lock:
                        self._listings[mkey] = found
                    return found.table
            listed_at = time.time()
            table = ObjectTable.from_infos(store.list(prefix, pattern=pattern, regex=regex))
            if path is not None and ttl > 0:
                meta = {"what": "listing", "store": mkey[0], "prefix": prefix, "pattern": pattern, "regex": regex,
                        "listed_at": listed_at, "t_prefix": table.prefix}  # fmt: skip
                self._write("a listing", path, table.arrays("t"), meta, table.token)
        self._count(False)
        with self._lock:
            self._listings[mkey] = _Timed(time.monotonic(), table)
        return table

    def list(self, store: Store, prefix: str, *, pattern: str | None = None,
             regex: str | None = None) -> list[ObjectInfo]:  # fmt: skip
        """:meth:`list_table` as a list of ObjectInfo (for small listings)."""
        return list(self.list_table(store, prefix, pattern=pattern, regex=regex))

    def _read_timed(self, path: str, expect: dict[str, Any]) -> _Timed | None:
        m = open_arrays(path)
        if m is None or any(m.meta.get(k) != v for k, v in expect.items()):
            return None
        age = time.time() - float(m.meta.get("listed_at", 0.0))
        if not -60.0 <= age <= self.options.listing_ttl:
            return None
        try:
            table = ObjectTable.from_arrays(m.arrays, str(m.meta["t_prefix"]), m.token)
        except (KeyError, ValueError):
            return None
        return _Timed(time.monotonic() - max(age, 0.0), table)

    # ------------------------------------------------------------------ stat results

    def stat_table(self, store: Store, table: ObjectTable, *, threads: int = 16) -> ObjectTable:
        """``table`` with the size, etag and mtime of every object of unknown size filled in by ``stat``.

        The results are trusted for ``listing_ttl`` like a listing (in memory, and on disk
        when persisting), so building the same dataset again makes no request.

        Raises:
            ObjectNotFoundError: an object does not exist.
        """
        unknown = np.flatnonzero(table.sizes < 0)
        if not len(unknown):
            return table
        ttl = self.options.listing_ttl
        mkey = (repr(store), table.digest(), table.prefix)
        with self._lock:
            cached = self._stats.get(mkey)
            if cached is not None and time.monotonic() - cached.at <= ttl:
                self.hits += 1
                return cached.table
        fkey = cache_key("stat", *mkey)
        path = self._path("stats", fkey + SUFFIX)
        with self._turn(fkey):
            if path is not None and ttl > 0:
                found = self._read_timed(path, {"what": "stat", "store": mkey[0], "digest": mkey[1]})
                if found is not None and found.table.same_uris(table):
                    self._count(True)
                    with self._lock:
                        self._stats[mkey] = found
                    return found.table
            stated_at = time.time()
            uris = [table.uri(int(r)) for r in unknown]
            with cf.ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris))),
                                       thread_name_prefix="s3dlio-stat") as pool:  # fmt: skip
                infos = list(pool.map(store.stat, uris))
            result = table.with_versions(unknown, infos)
            if path is not None and ttl > 0:
                meta = {"what": "stat", "store": mkey[0], "digest": mkey[1], "prefix": table.prefix,
                        "listed_at": stated_at, "t_prefix": result.prefix}  # fmt: skip
                self._write("stat results", path, result.arrays("t"), meta, result.token)
        self._count(False)
        with self._lock:
            self._stats[mkey] = _Timed(time.monotonic(), result)
        return result

    # ------------------------------------------------------------------ manifests

    def manifest_table(
        self, store: Store, uri: str, parse: Callable[[bytes], tuple[ObjectTable, np.ndarray | None]]
    ) -> tuple[ObjectTable, np.ndarray | None]:
        """The table (and per-object sample counts, if any) of the manifest object ``uri``.

        A manifest converted before (in this process or, persisted, in an earlier one) is
        trusted for ``listing_ttl`` like a listing, without any request; after that one
        ``stat`` tells whether it changed, and only a changed manifest is fetched and parsed
        (``parse(bytes)``) again.
        """
        uri = _canonical(uri)
        ttl = self.options.listing_ttl
        mkey = (repr(store), uri)
        with self._lock:
            found = self._manifests.get(mkey)
        if found is not None and time.monotonic() - found.at <= ttl:
            self._count(True)
            return found.table, found.samples
        path = self._path("manifests", cache_key("manifest", *mkey) + SUFFIX)
        info: ObjectInfo | None = None
        if found is None and path is not None:
            found = self._read_manifest(path, uri)
            if found is not None and time.monotonic() - found.at <= ttl:
                self._count(True)
                with self._lock:
                    self._manifests[mkey] = found
                return found.table, found.samples
        if found is not None:
            info = store.stat(uri)
            if _identity(info) == found.identity:
                found.at = time.monotonic()
                self._count(True)
                with self._lock:
                    self._manifests[mkey] = found
                return found.table, found.samples
        if info is None:
            info = store.stat(uri)
        checked_at = time.time()
        table, samples = parse(store.get(uri, size=info.size))
        entry = _Manifest(time.monotonic(), table, samples, _identity(info))
        if path is not None:
            arrays = table.arrays("t")
            if samples is not None:
                arrays["samples"] = samples
            meta = {"what": "manifest", "uri": uri, "store": mkey[0], "prefix": uri, "t_prefix": table.prefix,
                    "listed_at": checked_at, "identity": entry.identity}  # fmt: skip
            self._write("a manifest", path, arrays, meta, table.token)
        self._count(False)
        with self._lock:
            self._manifests[mkey] = entry
        return table, samples

    def _read_manifest(self, path: str, uri: str) -> _Manifest | None:
        m = open_arrays(path)
        if m is None or m.meta.get("uri") != uri:
            return None
        try:
            table = ObjectTable.from_arrays(m.arrays, str(m.meta["t_prefix"]), m.token)
            age = max(0.0, time.time() - float(m.meta["listed_at"]))
            return _Manifest(time.monotonic() - age, table, m.arrays.get("samples"), list(m.meta["identity"]))
        except (KeyError, ValueError, TypeError):
            return None

    # ------------------------------------------------------------------ catalogs

    def catalog(
        self,
        store: Store,
        source: str,
        kind: str,
        table: ObjectTable,
        *,
        build: BuildFn | None = None,
        counts: np.ndarray | None = None,
    ) -> Catalog:
        """The catalog of a dataset: ``table`` with sample counts, starts and format indexes.

        Args:
            store: the store the objects are read with (part of the key).
            source: what the table came from (a prefix and its filters, a manifest URI, the
                digest of an object list): part of the key, so that a changed listing of the
                same source reuses the indexes of its unchanged objects.
            kind: the format and every option that shapes its indexes and sample counts.
            table: the objects, as listed now.
            build: ``build(rows) -> (indexes, counts)`` for table rows that need indexing.
            counts: known sample counts (then nothing is built, no index is stored); with
                neither ``build`` nor ``counts``, every object holds one sample (raw objects).
        """
        mode = "counts" if counts is not None else "indexes" if build is not None else "ones"
        key = cache_key("catalog", LAYOUT_VERSION, repr(store), source, kind, mode)
        with self._lock:
            cat = self._catalogs.get(key)
        if cat is not None and cat.source_token == table.token:
            self._count(True)
            return cat
        directory = self._path("catalogs", key)
        if directory is None:
            new = make_catalog(table, build, counts, old=cat)
            self._count(new is cat)
            with self._lock:
                self._catalogs[key] = new
            return new
        with self._turn(key):
            disk = self._load_catalog(directory, cat)
            old = disk if disk is not None else cat
            if old is not None and old.source_token == table.token:
                result = old
            else:
                new = make_catalog(table, build, counts, old=old)
                result = new if new is old else self._persist_catalog(directory, new, source, kind)
                result.source_token = table.token
        self._count(result is old)
        with self._lock:
            self._catalogs[key] = result
        return result

    def _load_catalog(self, directory: str, cat: Catalog | None) -> Catalog | None:
        try:
            with open(os.path.join(directory, "current"), encoding="utf-8") as f:
                version = f.read().strip()
        except OSError:
            return None
        if cat is not None and version == cat.token + SUFFIX:
            return cat
        m = open_arrays(os.path.join(directory, version), shared_lock=True)
        return Catalog.from_mapped(m) if m is not None else None

    def _persist_catalog(self, directory: str, cat: Catalog, source: str, kind: str) -> Catalog:
        meta, arrays = cat.to_arrays()
        meta.update(what="catalog", source=source, kind=kind)
        version = cat.token + SUFFIX
        path = os.path.join(directory, version)
        if not self._write("a catalog", path, arrays, meta, cat.token):
            return cat
        try:
            write_text_atomic(os.path.join(directory, "current"), version)
        except OSError as exc:
            self._disk_failed("write a catalog pointer", exc)
            return cat
        m = open_arrays(path, shared_lock=True)
        mapped = Catalog.from_mapped(m) if m is not None else None
        remove_unused(directory, keep=version)
        if mapped is None:
            return cat
        mapped.loose = cat.loose
        return mapped

    # ------------------------------------------------------------------ single indexes

    def index(self, info: ObjectInfo, kind: str, build: Callable[[], Any]) -> Any:
        """The index of the object ``info`` describes, built with ``build()`` on a miss (memory only).

        ``kind`` names the format and every option that changes the index (two readers
        with different options never share an index). The key holds the object's size and
        etag (or mtime), so a rewritten object is indexed again.
        """
        key = (info.uri, info.size, info.etag, None if info.etag else info.mtime, kind)
        with self._lock:
            found = self._indexes.get(key)
            if found is not None:
                self._indexes.move_to_end(key)
                self.hits += 1
                return found
        built = build()
        with self._lock:
            self.misses += 1
            self._indexes[key] = built
            while len(self._indexes) > self.options.max_indexes:
                self._indexes.popitem(last=False)
        return built

    # ------------------------------------------------------------------ maintenance

    def refresh(self, prefix: str | None = None, *, indexes: bool = False) -> None:
        """Forget cached listings, stat results and manifests (all, or those under ``prefix``), here and on disk.

        The next dataset built from them lists again. Format indexes stay: the new listing's
        sizes and etags tell which are still valid. ``indexes=True`` forgets those too (the
        catalogs and single indexes under ``prefix``), so everything is indexed again.
        """
        def under(p: str | None) -> bool:
            return prefix is None or (p is not None and p.startswith(prefix))

        with self._lock:
            for lkey in [k for k in self._listings if under(k[1])]:
                del self._listings[lkey]
            for skey in [k for k in self._stats if under(k[2])]:
                del self._stats[skey]
            for mkey in [k for k in self._manifests if under(k[1])]:
                del self._manifests[mkey]
            for cat in self._catalogs.values():
                cat.source_token = None  # check it against the next listing
            if indexes:
                for ckey in [k for k, c in self._catalogs.items() if under(c.table.prefix)]:
                    del self._catalogs[ckey]
                for ikey in [k for k in self._indexes if under(k[0])]:
                    del self._indexes[ikey]
        root = self.directory
        if root is None:
            return
        for sub, field in (("listings", "prefix"), ("stats", "prefix"), ("manifests", "uri")):
            folder = os.path.join(root, sub)
            for name in _names(folder):
                path = os.path.join(folder, name)
                meta = read_meta(path)
                if meta is None or under(meta.get(field)):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        if indexes:
            folder = os.path.join(root, "catalogs")
            for name in _names(folder):
                directory = os.path.join(folder, name)
                current = os.path.join(directory, "current")
                try:
                    with open(current, encoding="utf-8") as f:
                        meta = read_meta(os.path.join(directory, f.read().strip()))
                except OSError:
                    meta = None
                if meta is None or under(meta.get("prefix")):
                    with contextlib.suppress(OSError):
                        os.unlink(current)
                    remove_unused(directory, keep="")

    def clear(self) -> None:
        """Forget everything this process holds in memory (persisted files stay)."""
        with self._lock:
            self._listings.clear()
            self._stats.clear()
            self._manifests.clear()
            self._catalogs.clear()
            self._indexes.clear()

    def __repr__(self) -> str:
        return (f"MetadataCache({len(self._listings)} listings, {len(self._catalogs)} catalogs, "
                f"{len(self._indexes)} indexes, persisted in {self.directory or 'nothing'})")  # fmt: skip


def _names(folder: str) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if not n.startswith(".")]
    except OSError:
        return []


_cache: MetadataCache | None = None
_cache_lock = threading.Lock()


def get_cache() -> MetadataCache:
    """This process's metadata cache (created on first use from ``S3DLIO_*`` variables)."""
    global _cache
    cache = _cache
    if cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = MetadataCache()
            cache = _cache
    return cache


def configure(options: CacheOptions | None = None, **overrides: Any) -> MetadataCache:
    """Replace this process's cache with a new, empty one (``options``, else ``S3DLIO_*`` variables + ``overrides``).

    >>> import tempfile
    >>> configure(cache_dir=tempfile.mkdtemp()).options.cache_persist
    True
    """
    global _cache
    opts = options.replace(**overrides) if options is not None else CacheOptions.from_env(**overrides)
    with _cache_lock:
        _cache = MetadataCache(opts)
        return _cache


def _after_fork_in_child() -> None:
    # A lock held by another thread of the parent at fork time would never be released here.
    global _cache_lock
    _cache_lock = threading.Lock()
    if _cache is not None:
        _cache._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["CacheOptions", "Catalog", "MetadataCache", "ObjectTable", "configure", "get_cache"]


def _canonical(uri: str) -> str:
    """``uri`` as an absolute canonical URI (relative local paths resolved), keeping a trailing slash."""
    from ..storage import parse_uri

    canonical = parse_uri(uri).uri
    if uri.endswith("/") and not canonical.endswith("/"):
        canonical += "/"
    return canonical
