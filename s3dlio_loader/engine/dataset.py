"""A dataset: the objects a loader reads, how many samples each holds, and how to read them.

``Dataset(source, format=...)`` resolves the source (a URI prefix or glob, a list of URIs
or :class:`~s3dlio_loader.storage.ObjectInfo`, or a :class:`Manifest`) to a table of
objects, learns the number of samples of each (from the format index, through the
process-global metadata cache; raw objects hold one sample each and need no request), and
reads any list of global sample ids, grouping them by object so that each object's samples
are fetched with coalesced requests and different objects are fetched concurrently.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..cache import get_cache
from ..errors import ConfigError, FormatError, ObjectNotFoundError
from ..formats import FORMATS, OnError, Reader, infer_format, reader_class
from ..storage import ObjectInfo, Store, parse_uri, store_for
from ..storage.uri import has_glob


class Manifest:
    """A list of objects with their sizes (and etags), known without listing storage.

    A manifest file is JSON Lines, one object per line: ``{"uri": ..., "size": ...,
    "etag": ...}`` (``etag`` optional). With a manifest, starting a loader makes no LIST request.
    """

    def __init__(self, objects: Sequence[ObjectInfo]) -> None:
        self.objects = list(objects)

    @classmethod
    def read(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> Manifest:
        """Load a JSON Lines manifest from any URI."""
        data = store_for(uri, storage_options).get(uri)
        objects = []
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                objects.append(ObjectInfo(str(row["uri"]), int(row["size"]), row.get("etag"), row.get("mtime")))
            except (ValueError, KeyError, TypeError) as exc:
                raise FormatError(f"line {lineno}: not a manifest entry ({exc})", uri=uri, format="manifest") from None
        return cls(objects)

    def write(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        """Write this manifest as JSON Lines to ``uri``."""
        lines = [json.dumps({"uri": o.uri, "size": o.size, "etag": o.etag}) for o in self.objects]
        store_for(uri, storage_options).put(uri, ("\n".join(lines) + "\n").encode())

    def __len__(self) -> int:
        return len(self.objects)


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
        io_threads: objects of one batch fetched concurrently.
        **format_options: passed to the format's reader (``columns=``, ``decode=``, ``rows=``...).
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
        objects, source_uri = self._resolve(source, storage_options, store, pattern, regex)
        if not objects:
            raise ObjectNotFoundError("no objects to load", uri=source_uri, op="list")
        self.store = store if store is not None else store_for(objects[0].uri, storage_options)
        self.format = format or infer_format(objects[0].uri)
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; known formats: {sorted(FORMATS)}")
        self.objects = objects
        self.on_error: OnError = on_error
        self.io_threads = io_threads
        self.format_options = dict(format_options)
        self._reader_cls = reader_class(self.format)
        self._index_kind = f"{self.format}:{json.dumps(self.format_options, sort_keys=True, default=repr)}"
        self._local = _ProcessLocal()
        self.sizes = self._count_samples()
        self.starts = np.concatenate(([0], np.cumsum(self.sizes))).astype(np.int64)

    # ------------------------------------------------------------------ set-up

    def _resolve(
        self,
        source: Source,
        storage_options: Mapping[str, Any] | None,
        store: Store | None,
        pattern: str | None,
        regex: str | None,
    ) -> tuple[list[ObjectInfo], str]:
        if isinstance(source, Manifest):
            return list(source.objects), "<manifest>"
        if isinstance(source, str):
            lister = store if store is not None else store_for(source, storage_options)
            is_prefix = source.endswith("/") or has_glob(source) or pattern is not None or regex is not None
            if not is_prefix and parse_uri(source).scheme in ("file", "direct") and os.path.isdir(
                parse_uri(source).path
            ):
                is_prefix = True
            if is_prefix:
                return get_cache().list(lister, source, pattern=pattern, regex=regex), source
            return [ObjectInfo(source, -1)], source
        items = list(source)
        return [o if isinstance(o, ObjectInfo) else ObjectInfo(str(o), -1) for o in items], "<list>"

    def _count_samples(self) -> np.ndarray:
        if self.format == "raw" and not self.format_options:
            return np.ones(len(self.objects), dtype=np.int64)
        with cf.ThreadPoolExecutor(max_workers=min(self.io_threads, len(self.objects))) as pool:
            counts = list(pool.map(lambda i: len(self.reader(i)), range(len(self.objects))))
        return np.asarray(counts, dtype=np.int64)

    def _info(self, i: int) -> ObjectInfo:
        info = self.objects[i]
        if info.size < 0:  # a bare URI: one HEAD, remembered
            info = self.objects[i] = self.store.stat(info.uri)
        return info

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def num_objects(self) -> int:
        """Number of objects."""
        return len(self.objects)

    def reader(self, i: int) -> Reader:
        """This process's reader of object ``i`` (its index from the metadata cache)."""
        local = self._local.get()
        found = local.readers.get(i)
        if found is not None:
            local.readers.move_to_end(i)
            return found
        info = self._info(i)
        options = dict(self.format_options)
        if self.format == "raw":
            options.setdefault("size", info.size)
        try:
            reader = self._reader_cls(info.uri, store=self.store, on_error=self.on_error, **options)
        except TypeError as exc:
            raise ConfigError(f"bad option for format {self.format!r}: {exc}") from None
        if self.format != "raw":
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
        ids = np.asarray(list(sample_ids) if not isinstance(sample_ids, np.ndarray) else sample_ids, dtype=np.int64)
        obj, local = self.locate(ids)
        groups: dict[int, list[int]] = {}
        for pos, o in enumerate(obj.tolist()):
            groups.setdefault(o, []).append(pos)

        def read_group(o: int) -> tuple[int, list[Any]]:
            positions = groups[o]
            return o, self.reader(o).read_batch(local[positions].tolist())

        out: list[Any] = [_MISSING] * len(ids)
        if len(groups) == 1:
            results: Iterable[tuple[int, list[Any]]] = [read_group(next(iter(groups)))]
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


TransformFn = Callable[[Any], Any]
