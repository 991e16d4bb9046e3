"""A dataset: the objects a loader reads, how many samples each holds, and how to read them.

``Dataset(source, format=...)`` resolves the source (a URI prefix or glob, a list of URIs
or :class:`~s3dlio_loader.storage.ObjectInfo`, or a :class:`Manifest`) to a compact table of
objects, learns the number of samples of each and their format indexes (through the
process-global metadata cache, :mod:`s3dlio_loader.cache`: a dataset built again, in this
process or in a new one, makes no metadata request), and reads any list of global sample ids,
grouping them by object so that each object's samples are fetched with coalesced requests and
different objects are fetched concurrently.

Memory: the object table, the sample counts and starts, and the packed format indexes are
numpy arrays in one memory-mapped cache file (see :class:`~s3dlio_loader.cache.Catalog`);
worker processes, forked or spawned, map the same pages instead of holding copies, and a
10^7-object dataset is a few arrays, not 10^7 Python objects.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from ..cache import Catalog, ObjectTable, get_cache
from ..cache.manifest import manifest_format, parse_manifest, serialize_manifest
from ..errors import ConfigError, ObjectNotFoundError
from ..formats import FORMATS, OnError, Reader, infer_format, reader_class
from ..storage import ObjectInfo, Store, parse_uri, store_for
from ..storage.store import LocalFiles
from ..storage.uri import has_glob
from .allocator import tune_allocator


class Manifest:
    """A list of objects with their sizes (etags, and optionally sample counts), known without listing storage.

    With a manifest, starting a loader makes no LIST request; with ``samples`` (the number of
    samples each object holds for the format and options the dataset uses), it makes no
    request at all: each object's format index is then built when the object is first read.

    Files (:meth:`read`, :meth:`write`): JSON Lines, one object per line, ``{"uri": ...,
    "size": ..., "etag": ..., "mtime": ..., "samples": ...}`` (all but ``uri`` and ``size``
    optional), or Parquet with those columns when the name ends in ``.parquet``/``.pq``
    (several times smaller and faster to read: the compact choice for 10^7 objects). Both are
    converted with pyarrow, never object by object in Python.

    Args:
        objects: ObjectInfo (or an :class:`~s3dlio_loader.cache.ObjectTable`).
        samples: samples held by each object, or None.

    >>> m = Manifest([ObjectInfo("s3://b/a.npz", 100, "e1")], samples=[1])
    >>> len(m), m.objects[0].size, m.samples.tolist()
    (1, 100, [1])
    """

    def __init__(self, objects: Sequence[ObjectInfo] | ObjectTable,
                 samples: Sequence[int] | np.ndarray | None = None) -> None:  # fmt: skip
        self.objects: ObjectTable = objects if isinstance(objects, ObjectTable) else ObjectTable.from_infos(objects)
        self.samples: np.ndarray | None = None
        if samples is not None:
            counts = np.asarray(samples, dtype=np.int64)
            if counts.shape != (len(self.objects),) or (counts.size and counts.min() < 0):
                raise ConfigError(f"samples must hold one count >= 0 per object ({len(self.objects)} objects, "
                                  f"got shape {counts.shape})")  # fmt: skip
            self.samples = counts
        #: The URI this manifest was read from (identifies it in the metadata cache), or None.
        self.source: str | None = None

    @classmethod
    def from_columns(
        cls,
        uris: Sequence[str],
        sizes: Sequence[int] | np.ndarray,
        etags: Sequence[str | None] | np.ndarray | None = None,
        mtimes: Sequence[float | None] | np.ndarray | None = None,
        samples: Sequence[int] | np.ndarray | None = None,
    ) -> Manifest:
        """A manifest from parallel columns (faster than a list of ObjectInfo for millions of objects)."""
        return cls(ObjectTable.from_columns(uris, sizes, etags, mtimes), samples)

    @classmethod
    def read(cls, uri: str, storage_options: Mapping[str, Any] | None = None, *,
             store: Store | None = None) -> Manifest:  # fmt: skip
        """Load a manifest (JSON Lines, or Parquet by extension) from any URI.

        The manifest is stat'ed once; a version read before (by this process or, with the
        persisted cache, an earlier one) is not fetched or parsed again.

        Raises:
            FormatError: an entry is malformed (the message names its line or row).
        """
        store = store if store is not None else store_for(uri, storage_options)
        table, samples = get_cache().manifest_table(store, uri, lambda data: parse_manifest(data, uri))
        manifest = cls(table)
        manifest.samples = samples  # checked when parsed: no O(n) pass here
        manifest.source = uri
        return manifest

    def write(self, uri: str, storage_options: Mapping[str, Any] | None = None, *,
              store: Store | None = None) -> None:  # fmt: skip
        """Write this manifest to ``uri``: Parquet for ``.parquet``/``.pq``, else JSON Lines."""
        store = store if store is not None else store_for(uri, storage_options)
        store.put(uri, serialize_manifest(self.objects, self.samples, manifest_format(uri)))

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        counts = "" if self.samples is None else f", {int(self.samples.sum())} samples"
        return f"Manifest({len(self)} objects{counts}{f' from {self.source}' if self.source else ''})"


Source = str | Sequence[str | ObjectInfo] | Manifest


class Dataset:
    """The samples of many objects of one format, addressed by global sample id.

    Args:
        source: a URI prefix (``s3://b/train/``), a glob (``s3://b/train/*.parquet``), a list
            of URIs or ObjectInfo, or a :class:`Manifest`.
        format: ``"parquet"``, ``"npy"``, ``"npz"``, ``"tfrecord"``, ``"hdf5"`` or ``"raw"``;
            inferred from the first object's extension when None.
        storage_options: fsspec options for the backend (ignored when ``store`` is given).
        store: the Store to use; the process-wide shared one when None.
        pattern, regex: filter a prefix listing by the key relative to the prefix.
        on_error: ``"raise"`` or ``"skip"`` (samples that fail to decode are left out and counted).
        io_threads: objects of one batch fetched (and objects indexed) concurrently.
        **format_options: passed to the format's reader (``columns=``, ``decode=``, ``rows=``...).

    Requests made to start: one LIST per prefix (none while the cached listing is younger
    than ``CacheOptions.listing_ttl``, none with a manifest), one ``stat`` per object of a
    list of bare URIs (cached the same way), and the index requests of objects not indexed
    before in their current version (none for raw objects or a manifest with ``samples``).

    Attributes:
        objects: the objects, an :class:`~s3dlio_loader.cache.ObjectTable` (``len``,
            ``objects[i]`` -> ObjectInfo).
        sizes: samples of each object, int64 (read-only).
        starts: global id of each object's first sample, int64 ``[num_objects + 1]``.
    """

    def __init__(
        self,
        source: Source,
        format: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        store: Store | None = None,
        pattern: str | None = None,
        regex: str | None = None,
        on_error: OnError = "raise",
        io_threads: int = 16,
        **format_options: Any,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip' (got on_error={on_error!r})")
        if io_threads < 1:
            raise ConfigError(f"io_threads must be >= 1 (got io_threads={io_threads})")
        cache = get_cache()
        table, counts, source_key, source_uri = self._resolve(source, storage_options, store, pattern, regex)
        if not len(table):
            raise ObjectNotFoundError("no objects to load", uri=source_uri, op="list")
        first = table.uri(0)
        self.store = store if store is not None else store_for(first, storage_options)
        self.format = format or infer_format(first)
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; known formats: {sorted(FORMATS)}")
        self.on_error: OnError = on_error
        self.io_threads = io_threads
        self.format_options = dict(format_options)
        self._reader_cls: type[Reader] | None = None
        self._index_kind = f"{self.format}:{json.dumps(self.format_options, sort_keys=True, default=_stable_repr)}"
        self._local = _ProcessLocal()
        raw = self.format == "raw"
        if counts is None and not raw and bool(np.any(table.sizes < 0)):
            table = cache.stat_table(self.store, table, threads=io_threads)
        self._catalog: Catalog = cache.catalog(
            self.store, source_key, self._index_kind, table,
            build=None if raw or counts is not None else functools.partial(self._build, table), counts=counts,
        )  # fmt: skip

    # ------------------------------------------------------------------ set-up

    @property
    def objects(self) -> ObjectTable:
        """The objects (see the class docstring)."""
        return self._catalog.table

    @property
    def sizes(self) -> np.ndarray:
        """Samples of each object (int64, read-only)."""
        return self._catalog.counts

    @property
    def starts(self) -> np.ndarray:
        """Global id of each object's first sample; ``starts[-1] == len(self)``."""
        return self._catalog.starts

    @property
    def catalog(self) -> Catalog:
        """The cached table, counts, starts and format indexes behind this dataset."""
        return self._catalog

    def _resolve(
        self,
        source: Source,
        storage_options: Mapping[str, Any] | None,
        store: Store | None,
        pattern: str | None,
        regex: str | None,
    ) -> tuple[ObjectTable, np.ndarray | None, str, str]:
        """(table, known sample counts, cache key of the source, URI for error messages)."""
        if isinstance(source, Manifest):
            key = f"manifest:{source.source}" if source.source else f"objects:{source.objects.digest()}"
            return source.objects, source.samples, key, source.source or "<manifest>"
        if isinstance(source, str):
            lister = store if store is not None else store_for(source, storage_options)
            parsed = parse_uri(source)
            is_prefix = source.endswith("/") or has_glob(source) or pattern is not None or regex is not None
            if not is_prefix and parsed.scheme in ("file", "direct") and os.path.isdir(parsed.path):
                is_prefix = True
            if is_prefix:
                table = get_cache().list_table(lister, source, pattern=pattern, regex=regex)
                return table, None, f"list:{source}|{pattern}|{regex}", source
            one = ObjectTable.from_infos([ObjectInfo(source, -1)])
            return one, None, f"objects:{one.digest()}", source
        items = [o if isinstance(o, ObjectInfo) else ObjectInfo(str(o), -1) for o in source]
        table = ObjectTable.from_infos(items)
        return table, None, f"objects:{table.digest()}", "<list>"

    def _build(self, table: ObjectTable, rows: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Index rows ``rows`` of ``table`` (concurrently): their format indexes and sample counts."""
        cls = self._reader_class()

        def one(r: int) -> tuple[Any, int]:
            reader = self._new_reader(cls, table[r], None)
            reader._index = reader.build_index()
            return reader._index, len(reader)

        todo = rows.tolist()
        if len(todo) == 1:
            results = [one(todo[0])]
        else:
            with cf.ThreadPoolExecutor(max_workers=min(self.io_threads, len(todo)),
                                       thread_name_prefix="s3dlio-index") as pool:  # fmt: skip
                results = list(pool.map(one, todo))
        return [idx for idx, _ in results], np.fromiter((c for _, c in results), dtype=np.int64, count=len(results))

    def _reader_class(self) -> type[Reader]:
        if self._reader_cls is None:
            self._reader_cls = reader_class(self.format)
        return self._reader_cls

    def _new_reader(self, cls: type[Reader], info: ObjectInfo, index: Any) -> Reader:
        # The reader stats the object through a store that already knows the answer (from the
        # listing, manifest or stat cache): building an index then costs only its own requests.
        store = cast(Store, _KnownInfoStore(self.store, info)) if info.size >= 0 else self.store
        try:
            return cls(info.uri, store=store, on_error=self.on_error, index=index, **self.format_options)
        except TypeError as exc:
            raise ConfigError(f"bad option for format {self.format!r}: {exc}") from None

    def _info(self, i: int) -> ObjectInfo:
        return self.objects[i]

    def manifest(self) -> Manifest:
        """A manifest of this dataset's objects with their sample counts: write it once, and
        later datasets built from it start without any request."""
        return Manifest(self.objects, samples=np.asarray(self.sizes))

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def num_objects(self) -> int:
        """Number of objects."""
        return len(self.objects)

    def reader(self, i: int) -> Reader:
        """This process's reader of object ``i`` (its index from the dataset's catalog, no request)."""
        local = self._local.get()
        found = local.readers.get(i)
        if found is not None:
            local.readers.move_to_end(i)
            return found
        info = self._info(i)
        cls = self._reader_class()
        if self.format == "raw":
            reader = self._new_reader(cls, info, None)
            if info.size >= 0:
                reader._index = reader.build_index()  # from the table: no request
        else:
            index = self._catalog.index(i)
            if index is not None:
                reader = self._new_reader(cls, info, index)
            else:  # a catalog without indexes (manifest with samples): build it once per process
                reader = self._new_reader(cls, info, None)
                reader._index = get_cache().index(info, self._index_kind, reader.build_index)
        local.readers[i] = reader
        if len(local.readers) > local.max_readers:
            local.readers.popitem(last=False)
        return reader

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(object index, sample index inside the object) of each global sample id."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample ids outside 0..{len(self) - 1}")
        obj = np.searchsorted(self.starts, ids, side="right") - 1
        return obj, ids - self.starts[obj]

    def read_samples(self, sample_ids: Iterable[int] | np.ndarray) -> list[Any]:
        """The samples with these global ids, in that order.

        Samples of one object are read with one ``read_batch`` call (coalesced requests);
        different objects are read concurrently on ``io_threads`` threads. With
        ``on_error="skip"``, samples that fail to decode are left out.
        """
        tune_allocator()  # once per process (see engine/allocator.py)
        ids = np.asarray(list(sample_ids) if not isinstance(sample_ids, np.ndarray) else sample_ids, dtype=np.int64)
        if self._whole_local_objects:
            return self._read_whole_local_objects(ids)
        obj, local = self.locate(ids)
        groups: dict[int, list[int]] = {}
        for pos, o in enumerate(obj.tolist()):
            groups.setdefault(o, []).append(pos)

        def read_group(o: int) -> tuple[int, list[Any]]:
            positions = groups[o]
            return o, self.reader(o).read_batch(local[positions].tolist())

        out: list[Any] = [_MISSING] * len(ids)
        if len(groups) == 1 or self.store.scheme == "file":
            # Local objects are read in this thread: a page-cache read costs less than the
            # hand-off to a pool thread, and buffers freed here are reused while still mapped
            # (see Store.get_many); remote objects are fetched concurrently.
            results: Iterable[tuple[int, list[Any]]] = [read_group(o) for o in groups]
        else:
            results = self._local.get().pool(self.io_threads).map(read_group, list(groups))
        skipped = False
        for o, samples in results:
            positions = groups[o]
            if len(samples) != len(positions):
                skipped = True  # on_error="skip" dropped some; keep the ones that decoded, in order
                for pos, sample in zip(positions, samples, strict=False):
                    out[pos] = sample
                continue
            for pos, sample in zip(positions, samples, strict=True):
                out[pos] = sample
        return [s for s in out if s is not _MISSING] if skipped else out

    @property
    def _whole_local_objects(self) -> bool:
        # Undecoded raw objects on file://: one sample per object, the bytes of the file.
        return self.format == "raw" and self.format_options.get("decode") is None and self.store.scheme == "file"

    def _read_whole_local_objects(self, ids: np.ndarray) -> list[Any]:
        """Raw samples of local files, read in one pass of the store (see Store.get_many):
        at ~30 us per cached 256 KiB file, a reader object per sample would double the cost."""
        order = self.locate(ids)[0].tolist()
        distinct = list(dict.fromkeys(order))
        table = self.objects
        data = dict(zip(distinct, (b for _, b in self.store.get_many([table.uri(o) for o in distinct])), strict=True))
        return [data[o] for o in order]

    def open_local_raw(self, sample_ids: Sequence[int] | np.ndarray) -> LocalFiles | None:
        """The files of these samples opened for direct reads (:meth:`Store.open_local`), when
        they are undecoded raw objects on file://; None otherwise (read them with
        :meth:`read_samples`). The engine's workers and the torch adapter read such batches
        straight into shared memory or a tensor."""
        if not self._whole_local_objects:
            return None
        tune_allocator()  # the caller allocates the destination: once per process (see engine/allocator.py)
        table = self.objects
        return self.store.open_local([table.uri(o) for o in self.locate(np.asarray(sample_ids))[0].tolist()])

    @property
    def skipped(self) -> int:
        """Samples skipped (``on_error="skip"``) by this process's readers."""
        return sum(r.skipped for r in self._local.get().readers.values())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = _ProcessLocal()

    def __repr__(self) -> str:
        return f"Dataset({self.num_objects} objects, {len(self)} samples, format={self.format!r})"


class _Missing:
    pass


_MISSING = _Missing()


class _LocalState:
    def __init__(self) -> None:
        self.readers: OrderedDict[int, Reader] = OrderedDict()
        self.max_readers = 4096
        self._pool: cf.ThreadPoolExecutor | None = None

    def pool(self, threads: int) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3dlio-read")
        return self._pool


class _ProcessLocal:
    """Per-process state (readers, thread pool) that must not cross a fork."""

    def __init__(self) -> None:
        self._pid = -1
        self._state: _LocalState | None = None

    def get(self) -> _LocalState:
        # No lock: one taken by a parent thread at fork time would never be released in the
        # child. Two threads racing here each build a state; one is dropped (readers only).
        state = self._state
        if self._pid != os.getpid() or state is None:
            state = self._state = _LocalState()
            self._pid = os.getpid()
        return state


class _KnownInfoStore:
    """A Store whose ``stat`` of one object answers from what the dataset already knows (no request).

    Everything else goes to the wrapped store.
    """

    __slots__ = ("_info", "_store")

    def __init__(self, store: Store, info: ObjectInfo) -> None:
        self._store = store
        self._info = info

    def stat(self, uri: str) -> ObjectInfo:
        if uri == self._info.uri:
            return self._info
        return self._store.stat(uri)

    def __getattr__(self, name: str) -> Any:
        if name in ("_store", "_info"):
            raise AttributeError(name)
        return getattr(self._store, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_KnownInfoStore, (self._store, self._info))

    def __repr__(self) -> str:
        return repr(self._store)


def _stable_repr(value: Any) -> str:
    """A text for a format option that is the same in every process (functions by name, not address)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return repr(value)


TransformFn = Callable[[Any], Any]
