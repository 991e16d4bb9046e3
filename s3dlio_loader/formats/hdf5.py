"""HDF5: rows along axis 0 of one or more datasets as samples, read by direct chunk requests.

Reading has two paths:

* **Index** (once per object): h5py opens the object through :class:`BlockCachedFile`, a
  read-only file object that fetches aligned blocks with ``Store.get_ranges`` and keeps
  them in a bounded LRU. The layout of every selected dataset is recorded in an
  :class:`HDF5Index`: for contiguous datasets the byte offset of the data, for chunked ones
  the byte offset, size and filter mask of every stored chunk, plus dtype, shape, chunk
  shape and filter pipeline.
* **Samples**: :meth:`HDF5Reader.read_batch` turns the requested rows into the byte ranges
  of the chunks (or contiguous rows) that hold them, fetches them all with one coalesced
  ``Store.get_ranges`` call and decodes in Python: deflate with :mod:`zlib`, the shuffle
  filter with numpy, fletcher32 checked and stripped. Other filters (lzf, szip, scale-offset,
  n-bit, plugins) are decoded by HDF5 itself: the fetched chunk is written into a one-chunk
  in-memory dataset with the same pipeline (``write_direct_chunk``) and read back, so those
  chunks still come from the same coalesced requests. The newest decoded chunk of each
  dataset is kept (more with ``chunk_cache_bytes``), so consecutive batches inside one chunk
  fetch and decode it once.

Datasets that cannot be read from raw bytes fall back to h5py reading through the
block-cached file object: compound (other than complex), variable-length, array and
reference dtypes, compact and virtual layouts, external storage, and byte layouts whose
file type does not match the numpy dtype.

Samples are read-only numpy arrays (views into fetched or decoded buffers, shared with the
chunk cache); ``copy()`` one to modify it. Rows of 1-D datasets are numpy scalars, as with
``h5py``.

h5py is an optional dependency (``pip install 's3dlio-loader[hdf5]'``); importing this
module does not import it.

>>> import numpy as np, tempfile
>>> from s3dlio_loader.formats import open as open_reader, write
>>> uri = f"file://{tempfile.mkdtemp()}/d.h5"
>>> write(uri, {"x": np.arange(6).reshape(3, 2), "y": np.array([10, 11, 12])}, chunks=2)
>>> r = open_reader(uri)
>>> len(r), r[1]["x"].tolist(), int(r[1]["y"])
(3, [2, 3], 11)
>>> open_reader(uri, datasets="x")[2].tolist()
[4, 5]
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import dataclasses
import gc
import io
import logging
import os
import sys
import threading
import uuid
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, FormatError, MissingDependencyError, S3dlioError
from ..storage import Store
from .base import FormatIndex, OnError, Reader, check_indices

log = logging.getLogger(__name__)

FORMAT = "hdf5"
MiB = 1 << 20

#: Default size of the aligned blocks BlockCachedFile fetches (HDF5 metadata reads are small
#: and clustered: one 1 MiB block usually holds the superblock and every object header).
DEFAULT_BLOCK_SIZE = 1 * MiB
#: Default bound of BlockCachedFile's block LRU.
DEFAULT_BLOCK_CACHE_BYTES = 32 * MiB
#: Default bytes of decoded chunks kept beyond the newest chunk of each dataset (always kept).
#: Measured: holding more than that makes sequential reading up to 2x slower (every chunk then
#: lands in fresh memory), and it only pays off for random access inside a small working set.
DEFAULT_CHUNK_CACHE_BYTES = 0
#: BlockCachedFile reads at least this many blocks long bypass the block cache (bulk data).
BYPASS_BLOCKS = 4
#: Most blocks BlockCachedFile fetches at once when its misses are sequential.
MAX_READAHEAD_BLOCKS = 8

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_FLETCHER32 = 3
FILTER_LZF = 32000
FILTER_NAMES = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset",
                32000: "lzf"}
_PYTHON_FILTERS = frozenset({FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_FLETCHER32})

#: Layout names recorded in the index.
CONTIGUOUS, CHUNKED, H5PY = "contiguous", "chunked", "h5py"

_INSTALL_HINT = "h5py is needed to read and write HDF5; install it with: pip install 's3dlio-loader[hdf5]'"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL_HINT) from exc
    _register_atexit()
    return h5py


# h5py files opened over a Python file object crash the interpreter when they are still open
# at exit (HDF5 closes them after the file object is gone), so every such file is registered
# here and closed by an atexit hook (registered after h5py's import, so it runs before h5py's).
_open_h5files: weakref.WeakSet[Any] = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_done = False


def _register_atexit() -> None:
    global _atexit_done
    if _atexit_done:
        return
    with _atexit_lock:
        if not _atexit_done:
            atexit.register(_close_open_files)
            _atexit_done = True


def _close_open_files() -> None:
    for f in list(_open_h5files):
        with contextlib.suppress(Exception), _gc_paused():  # best effort at interpreter exit
            f.close()


# h5py holds its global lock while HDF5 calls a Python file object, and needs that lock to
# deallocate any h5py object. BlockCachedFile waits for Store threads (thread pool, event loop):
# if cyclic garbage collection ran in one of them and freed an h5py object, both threads would
# wait for each other forever (h5py issue #2019). Automatic collection is therefore paused,
# process-wide, while h5py reads through a BlockCachedFile.
_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


# ---------------------------------------------------------------------- block-cached file


class BlockCachedFile(io.RawIOBase):
    """A read-only, seekable file object over one stored object, for ``h5py.File(f, "r")``.

    Reads are served from aligned blocks of ``block_size`` bytes fetched with
    ``store.get_ranges`` (all blocks a read is missing in one call) and kept in an LRU
    bounded by ``cache_bytes``. Reads of ``BYPASS_BLOCKS`` blocks or more go straight to
    ``store.get_range`` without touching the cache.

    A storage error inside :meth:`readinto` is kept in :attr:`error` and re-raised: h5py
    turns exceptions from a file object into its own, so callers check :attr:`error` after
    an h5py call to surface the original one.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); store = Store.from_uri(d); store.put(f"file://{d}/o", b"abcdef")
    >>> f = BlockCachedFile(store, f"file://{d}/o", 6, block_size=4)
    >>> f.seek(2); f.read(3)
    2
    b'cde'
    """

    def __init__(self, store: Store, uri: str, size: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES) -> None:
        super().__init__()
        _check_positive("block_size", block_size)
        _check_positive("block_cache_bytes", cache_bytes)
        self.store = store
        self.uri = uri
        self.size = size
        self.block_size = block_size
        self.cache_bytes = cache_bytes
        self.error: BaseException | None = None
        self._pos = 0
        self._blocks: OrderedDict[int, memoryview] = OrderedDict()
        self._cached = 0
        self._window = 1
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = self.pread_into(out, self._pos)
        self._pos += n
        return n

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end of the object)."""
        buf = bytearray(max(0, min(length, self.size - offset)))
        n = self.pread_into(memoryview(buf), offset)
        return bytes(buf[:n])

    def pread_into(self, out: memoryview, offset: int) -> int:
        """Fill ``out`` from ``offset``; return the number of bytes (short at the end)."""
        n = max(0, min(len(out), self.size - offset))
        if n == 0:
            return 0
        try:
            if n >= BYPASS_BLOCKS * self.block_size:
                out[:n] = self.store.get_range(self.uri, offset, n)
                return n
            with self._lock:
                self._copy_blocks(out, offset, n)
        except Exception as exc:
            self.error = exc
            raise
        return n

    def _copy_blocks(self, out: memoryview, offset: int, n: int) -> None:
        bs = self.block_size
        first, last = offset // bs, (offset + n - 1) // bs
        wanted = range(first, last + 1)
        missing = [k for k in wanted if k not in self._blocks]
        if missing:
            # Read ahead while misses are sequential (an HDF5 B-tree walk over a large file
            # visits nodes in file order): the window doubles up to MAX_READAHEAD_BLOCKS.
            sequential = missing[0] - 1 in self._blocks
            self._window = min(self._window * 2, MAX_READAHEAD_BLOCKS) if sequential else 1
            end = min(max(last + 1, missing[0] + self._window), -(-self.size // bs))
            missing += [k for k in range(last + 1, end) if k not in self._blocks]
            start, stop = missing[0] * bs, min(missing[-1] * bs + bs, self.size)
            if len(missing) == missing[-1] - missing[0] + 1:  # one run: one plain request
                whole = memoryview(self.store.get_range(self.uri, start, stop - start))
                views = [whole[(k - missing[0]) * bs : (k - missing[0] + 1) * bs] for k in missing]
            else:
                ranges = [(k * bs, min(bs, self.size - k * bs)) for k in missing]
                views = self.store.get_ranges(self.uri, ranges)
            for k, view in zip(missing, views, strict=True):
                self._blocks[k] = view
                self._cached += len(view)
        pos = 0
        for k in wanted:
            block = self._blocks[k]
            self._blocks.move_to_end(k)
            start = offset + pos - k * bs
            take = min(len(block) - start, n - pos)
            out[pos : pos + take] = block[start : start + take]
            pos += take
        while self._cached > self.cache_bytes and len(self._blocks) > last - first + 1:
            _, old = self._blocks.popitem(last=False)
            self._cached -= len(old)


# ---------------------------------------------------------------------- index


@dataclasses.dataclass(frozen=True, eq=False)
class HDF5Index(FormatIndex):
    """Where the rows of the selected datasets of one HDF5 object are.

    Per dataset ``d`` (in the order of ``names``): ``dtypes[d]`` (numpy ``dtype.str``),
    ``layouts[d]`` (``"contiguous"``, ``"chunked"`` or ``"h5py"`` for the fallback),
    ``filters[d]`` (the pipeline in order, ``"code:flags:cd,cd;..."``, ``""`` for none),
    ``fill_values[d]`` (hex of one fill element). ``ndims[d]`` dimensions, whose extents are
    ``shapes[o:o + ndims[d]]`` and chunk extents ``chunk_shapes[o:o + ndims[d]]`` with
    ``o = ndims[:d].sum()`` (a contiguous dataset is one chunk of its whole shape).

    Stored chunks of dataset ``d`` are ``chunk_start[d]:chunk_start[d + 1]`` of the chunk
    arrays, sorted by ``chunk_grid`` (the chunk's C-order position in the dataset's grid
    of chunks): ``chunk_addr`` byte offset, ``chunk_nbytes`` stored size, ``chunk_mask``
    filter mask (bit i set: filter i was skipped). Chunks never written are absent (rows
    there read as the fill value).
    """

    names: tuple[str, ...]
    length: int
    dtypes: tuple[str, ...]
    layouts: tuple[str, ...]
    filters: tuple[str, ...]
    fill_values: tuple[str, ...]
    ndims: np.ndarray
    shapes: np.ndarray
    chunk_shapes: np.ndarray
    chunk_start: np.ndarray
    chunk_grid: np.ndarray
    chunk_addr: np.ndarray
    chunk_nbytes: np.ndarray
    chunk_mask: np.ndarray

    def dataset_shape(self, d: int) -> tuple[int, ...]:
        """Shape of dataset ``d``."""
        o = int(self.ndims[:d].sum())
        return tuple(int(x) for x in self.shapes[o : o + int(self.ndims[d])])

    def dataset_chunk_shape(self, d: int) -> tuple[int, ...]:
        """Chunk shape of dataset ``d`` (its shape when contiguous)."""
        o = int(self.ndims[:d].sum())
        return tuple(int(x) for x in self.chunk_shapes[o : o + int(self.ndims[d])])


def _encode_pipeline(pipeline: Sequence[tuple[int, int, tuple[int, ...]]]) -> str:
    return ";".join(f"{code}:{flags}:{','.join(str(v) for v in cd)}" for code, flags, cd in pipeline)


def _decode_pipeline(text: str) -> list[tuple[int, int, tuple[int, ...]]]:
    out = []
    for part in filter(None, text.split(";")):
        code, flags, cd = part.split(":")
        out.append((int(code), int(flags), tuple(int(v) for v in cd.split(",") if v)))
    return out


# ---------------------------------------------------------------------- reader


class HDF5Reader(Reader):
    """Rows along axis 0 of HDF5 datasets as samples.

    Args:
        uri: the HDF5 object.
        datasets: which datasets to read. A list of paths (``["images", "grp/labels"]``):
            sample ``i`` is ``{path: row i of that dataset}``; all must have the same length
            along axis 0. One path as a string (``"images"``): sample ``i`` is the row
            itself. None (default): every dataset in the file with at least one dimension
            whose axis-0 length equals that of the first one in name order (others are left
            out); keys are paths without the leading ``/``.
        block_size: bytes per block of the block-cached file object used for metadata and
            the h5py fallback.
        block_cache_bytes: bound of that block cache.
        chunk_cache_bytes: bytes of decoded chunks kept beyond the newest chunk of each
            dataset, which is always kept so that consecutive batches decode a chunk once;
            raise it for random access within a working set of chunks.
        index, store, storage_options, on_error: see :class:`~s3dlio_loader.formats.base.Reader`.

    Raises:
        MissingDependencyError: h5py is not installed.
        ConfigError: a dataset is missing, is a group, is a scalar, or the lengths differ.
        FormatError: the object is not HDF5, is truncated, or a chunk does not decode.

    >>> import numpy as np, tempfile
    >>> uri = f"file://{tempfile.mkdtemp()}/a.h5"
    >>> write_hdf5(uri, {"a": np.arange(4.0)}, store=Store.from_uri(uri), chunks=2, compression="gzip")
    >>> r = HDF5Reader(uri, datasets="a")
    >>> [float(v) for v in r.read_batch([3, 0])]
    [3.0, 0.0]
    """

    format = FORMAT

    def __init__(
        self,
        uri: str,
        datasets: str | Sequence[str] | None = None,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if index is not None and not isinstance(index, HDF5Index):
            raise ConfigError(f"HDF5Reader needs an HDF5Index (got {type(index).__name__}) for {uri}")
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        _check_positive("block_size", block_size)
        _check_positive("block_cache_bytes", block_cache_bytes)
        _check_positive("chunk_cache_bytes", chunk_cache_bytes, allow_zero=True)
        self._single = isinstance(datasets, str)
        if datasets is None:
            self._keys: tuple[str, ...] | None = None
        else:
            keys = (datasets,) if isinstance(datasets, str) else tuple(datasets)
            if not keys or not all(isinstance(k, str) and k.strip("/") for k in keys):
                raise ConfigError(f"datasets must be a path or a non-empty list of paths (got {datasets!r}) "
                                  f"for {uri}")
            normal = [_normal(k) for k in keys]
            if len(set(normal)) != len(normal):
                raise ConfigError(f"datasets names a dataset twice (got {list(keys)!r}) for {uri}")
            self._keys = keys
        self.block_size = block_size
        self.block_cache_bytes = block_cache_bytes
        self.chunk_cache_bytes = chunk_cache_bytes
        if index is not None and self._keys is not None:
            missing = [k for k in self._keys if _normal(k) not in index.names]
            if missing:
                raise ConfigError(f"the index of {uri} does not cover datasets {missing} (it has "
                                  f"{list(index.names)}); rebuild it for these datasets")
        self._reset_process_state()

    # -- per-process state (never pickled, rebuilt after fork)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._plans: list[_Plan] | None = None
        self._chunk_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._chunk_cached = 0
        self._file: BlockCachedFile | None = None
        self._h5: Any = None
        self._decoders: dict[tuple[int, int], _HDF5ChunkDecoder] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_lock", "_plans", "_chunk_cache", "_file", "_h5", "_decoders"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._reset_process_state()

    def close(self) -> None:
        """Close the h5py file and scratch decoders this reader opened (it can still be used)."""
        if self._pid == os.getpid():
            if self._h5 is not None:
                _close_quietly(self._h5)
            for dec in self._decoders.values():
                dec.close()
        self._reset_process_state()

    def __enter__(self) -> HDF5Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # attributes may be gone at interpreter teardown
            if self._pid == os.getpid() and self._h5 is not None:
                _close_quietly(self._h5)

    # -- index

    @property
    def names(self) -> tuple[str, ...]:
        """The sample keys: the dataset paths read, in order."""
        return tuple(p.key for p in self._get_plans())

    def __len__(self) -> int:
        idx = self.index
        assert isinstance(idx, HDF5Index)
        return idx.length

    def build_index(self) -> HDF5Index:
        """Open the object with h5py over a block-cached file and record every dataset's layout."""
        h5py = _h5py()
        info = self.store.stat(self.uri)
        bf = BlockCachedFile(self.store, self.uri, info.size, block_size=self.block_size,
                             cache_bytes=self.block_cache_bytes)
        with _gc_paused():
            f = _open_h5(h5py, bf, self.uri)
            try:
                names = self._select(h5py, f)
                rows = [_describe(h5py, f[n], n, self.uri, info.size) for n in names]
            except (ConfigError, FormatError):
                raise
            except Exception as exc:
                if bf.error is not None:
                    raise bf.error from None
                raise FormatError(f"cannot read the file's metadata: {exc}", uri=self.uri,
                                  format=FORMAT) from exc
            finally:
                _close_quietly(f)
        if bf.error is not None:
            raise bf.error
        self._file = bf  # its cached blocks serve the h5py fallback later, if any dataset needs it
        length = rows[0].shape[0]
        counts = [len(r.grid) for r in rows]
        start = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=start[1:])

        def cat(attr: str) -> np.ndarray:
            parts = [np.asarray(getattr(r, attr), dtype=np.int64) for r in rows]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        return HDF5Index(
            uri=self.uri, size=info.size, etag=info.etag,
            names=tuple(names), length=int(length),
            dtypes=tuple(r.dtype for r in rows), layouts=tuple(r.layout for r in rows),
            filters=tuple(r.filters for r in rows), fill_values=tuple(r.fill for r in rows),
            ndims=np.array([len(r.shape) for r in rows], dtype=np.int64),
            shapes=cat("shape"), chunk_shapes=cat("chunk_shape"), chunk_start=start,
            chunk_grid=cat("grid"), chunk_addr=cat("addr"), chunk_nbytes=cat("nbytes"),
            chunk_mask=cat("mask"),
        )

    def _select(self, h5py: Any, f: Any) -> list[str]:
        def all_datasets() -> list[tuple[str, tuple[int, ...] | None]]:
            found: list[tuple[str, tuple[int, ...] | None]] = []

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    found.append((name, obj.shape))

            f.visititems(visit)
            return found

        if self._keys is None:
            found = all_datasets()
            candidates = sorted((n, s) for n, s in found if s)
            if not candidates:
                raise ConfigError(f"{self.uri} holds no dataset with at least one dimension "
                                  f"(datasets: {sorted(n for n, _ in found)})")
            length = candidates[0][1][0]
            chosen = [n for n, s in candidates if s[0] == length]
            left_out = [n for n, s in candidates if s[0] != length]
            if left_out:
                log.debug("%s: datasets %s left out (axis-0 length differs from %d)", self.uri, left_out,
                          length)
            return chosen
        lengths = {}
        for key in self._keys:
            name = _normal(key)
            obj = f.get(name)
            if obj is None or not isinstance(obj, h5py.Dataset):
                what = "is a group, not a dataset" if obj is not None else "does not exist"
                available = sorted(n for n, _ in all_datasets())
                raise ConfigError(f"dataset {key!r} {what} in {self.uri}; datasets: {available}")
            if not obj.shape:
                raise ConfigError(f"dataset {key!r} in {self.uri} is a scalar (shape {obj.shape}); samples "
                                  f"are rows along axis 0, so it needs at least one dimension")
            lengths[key] = obj.shape[0]
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"datasets of {self.uri} differ in axis-0 length: {lengths}; samples zip rows, "
                              f"so pass datasets of equal length")
        return [_normal(k) for k in self._keys]

    def _get_plans(self) -> list[_Plan]:
        self._check_process()
        plans = self._plans
        if plans is None:
            idx = self.index
            assert isinstance(idx, HDF5Index)
            if self._keys is None:
                pairs = [(n, n) for n in idx.names]
            else:
                missing = [k for k in self._keys if _normal(k) not in idx.names]
                if missing:
                    raise ConfigError(f"the index of {self.uri} does not cover datasets {missing} "
                                      f"(it has {list(idx.names)}); rebuild it for these datasets")
                pairs = [(k, _normal(k)) for k in self._keys]
            plans = [_Plan(idx, idx.names.index(name), key, pos) for pos, (key, name) in enumerate(pairs)]
            self._plans = plans
        return plans

    # -- reading

    def _read(self, i: int) -> Any:
        columns, _ = self._fetch([i], raise_errors=True)
        return self._samples(columns, [i])[0]

    def read_batch(self, indices: Sequence[int]) -> list[Any]:
        """Samples ``indices`` in that order, with one coalesced request for all their chunks."""
        n = len(self)
        rows: Sequence[int]
        if isinstance(indices, range) and indices.step == 1 and indices.start >= 0 and indices.stop <= n:
            rows = indices  # the common case of consecutive rows: no per-index checking
            unique: Sequence[int] = indices
        else:
            rows = check_indices(self.uri, indices, n)
            unique = sorted(set(rows))
        if not rows:
            return []
        columns, failed = self._fetch(unique, raise_errors=self.on_error == "raise")
        if failed:
            for r in rows:
                exc = failed.get(r)
                if exc is not None:
                    self._skip(exc)
            rows = [r for r in rows if r not in failed]
        return self._samples(columns, rows)

    def _samples(self, columns: list[_Rows], rows: Sequence[int]) -> list[Any]:
        if self._single:
            return columns[0].take(rows)
        keys = [p.key for p in self._get_plans()]
        taken = [c.take(rows) for c in columns]
        return [dict(zip(keys, values, strict=True)) for values in zip(*taken, strict=True)]

    def _fetch(self, rows: Sequence[int], *, raise_errors: bool) -> tuple[list[_Rows], dict[int, FormatError]]:
        """The fetched rows of each dataset for sorted unique ``rows``, and the rows that failed."""
        plans = self._get_plans()
        columns = [_Rows() for _ in plans]
        failed: dict[int, FormatError] = {}
        ranges: list[tuple[int, int]] = []
        jobs: list[tuple[_Plan, int, int, int]] = []  # (plan, first row / block, count / -1, first range)
        runs = _runs(rows)
        for p in plans:
            if p.layout == CONTIGUOUS:
                for a, b in runs:
                    if p.row_nbytes == 0 or p.addr is None:
                        columns[p.pos].add(a, p.constant_rows(a, b))
                        continue
                    jobs.append((p, a, b - a, len(ranges)))
                    ranges.append((p.addr + a * p.row_nbytes, (b - a) * p.row_nbytes))
            elif p.layout == CHUNKED:
                br = p.block_rows
                blocks: Iterable[int] = range(runs[0][0] // br, (runs[0][1] - 1) // br + 1) if len(runs) == 1 \
                    else sorted({r // br for r in rows})
                for blk in blocks:
                    cached = self._cache_get(p.pos, blk)
                    if cached is not None:
                        columns[p.pos].add(blk * br, cached)
                        continue
                    lo, hi = p.chunks_of_block(blk)
                    jobs.append((p, blk, -1, len(ranges)))
                    ranges.extend((p.addr_of(c), p.nbytes_of(c)) for c in range(lo, hi))
        if len(ranges) == 1:  # one range: read it in this thread, no hop through the Store's pool
            views = [memoryview(self.store.get_range(self.uri, *ranges[0]))]
        else:
            views = self.store.get_ranges(self.uri, ranges) if ranges else []
        for p, first, count, r0 in jobs:
            try:
                if count >= 0:
                    arr = np.frombuffer(views[r0], dtype=p.dtype).reshape((count, *p.shape[1:]))
                    columns[p.pos].add(first, arr)
                else:
                    lo, hi = p.chunks_of_block(first)
                    block = self._assemble(p, first, lo, views[r0 : r0 + hi - lo])
                    # A scan that read through the chunk's last row will not come back to it:
                    # keeping it would only hold memory (and make the next chunk land in fresh pages).
                    if self.chunk_cache_bytes or rows[-1] < p.block_span(first)[1] - 1:
                        self._cache_put(p.pos, first, block)
                    columns[p.pos].add(first * p.block_rows, block)
            except FormatError as exc:
                if raise_errors:
                    raise
                a, b = (first, first + count) if count >= 0 else p.block_span(first)
                for r in rows[bisect.bisect_left(rows, a) : bisect.bisect_left(rows, b)]:
                    failed.setdefault(r, exc)
        fallback = [p for p in plans if p.layout == H5PY]
        if fallback:
            self._read_h5py(fallback, runs, columns)
        return columns, failed

    def _assemble(self, p: _Plan, blk: int, lo: int, views: list[memoryview]) -> np.ndarray:
        """The rows of chunk-row ``blk`` (all inner chunks) as one read-only array."""
        a, b = p.block_span(blk)
        if p.inner == 1 and views:
            chunk = self._decode(p, lo, views[0])
            block = chunk[(slice(0, b - a), *(slice(0, n) for n in p.shape[1:]))]
        else:
            block = np.empty((b - a, *p.shape[1:]), dtype=p.dtype)
            if len(views) < p.inner:
                block[...] = p.fill
            for k, view in enumerate(views):
                chunk = self._decode(p, lo + k, view)
                coords = np.unravel_index(p.grid_of(lo + k), p.grid_shape)
                dst: list[slice] = [slice(0, b - a)]
                src: list[slice] = [slice(0, b - a)]
                for axis in range(1, len(p.shape)):
                    start = int(coords[axis]) * p.chunk_shape[axis]
                    stop = min(start + p.chunk_shape[axis], p.shape[axis])
                    dst.append(slice(start, stop))
                    src.append(slice(0, stop - start))
                block[tuple(dst)] = chunk[tuple(src)]
        block.flags.writeable = False
        return block

    def _decode(self, p: _Plan, c: int, raw: memoryview) -> np.ndarray:
        """Stored chunk ``c`` of ``p`` -> array of the full chunk shape."""
        mask = p.mask_of(c)
        offset = p.addr_of(c)
        active = p.pipeline if mask == 0 else [f for i, f in enumerate(p.pipeline) if not mask >> i & 1]
        if all(code in _PYTHON_FILTERS for code, _, _ in active):
            data = _run_python_pipeline(raw, active, p.chunk_nbytes, p.dtype.itemsize,
                                        uri=self.uri, name=p.name, offset=offset)
            return np.frombuffer(data, dtype=p.dtype).reshape(p.chunk_shape)
        with self._lock:
            # One scratch dataset per filter mask: its pipeline holds only the filters applied
            # to the chunk, because HDF5 ignores the mask of a chunk written directly and read
            # back in the same session.
            dec = self._decoders.get((p.pos, mask))
            if dec is None:
                dec = self._decoders[(p.pos, mask)] = _HDF5ChunkDecoder(p, active, self.uri)
            return dec.decode(raw, offset)

    def _cache_get(self, pos: int, blk: int) -> np.ndarray | None:
        with self._lock:
            block = self._chunk_cache.get((pos, blk))
            if block is not None:
                self._chunk_cache.move_to_end((pos, blk))
            return block

    def _cache_put(self, pos: int, blk: int, block: np.ndarray) -> None:
        with self._lock:
            key = (pos, blk)
            old = self._chunk_cache.pop(key, None)
            if old is not None:
                self._chunk_cached -= old.nbytes
            self._chunk_cache[key] = block
            self._chunk_cached += block.nbytes
            newest: dict[int, tuple[int, int]] = {}
            for k in reversed(self._chunk_cache):
                newest.setdefault(k[0], k)
            for k in list(self._chunk_cache):
                if self._chunk_cached <= self.chunk_cache_bytes:
                    break
                if newest.get(k[0]) != k:
                    self._chunk_cached -= self._chunk_cache.pop(k).nbytes

    def _read_h5py(self, plans: list[_Plan], runs: list[tuple[int, int]], columns: list[_Rows]) -> None:
        """The fallback: h5py slicing through the block-cached file object."""
        with self._lock, _gc_paused():
            f, bf = self._h5file()
            for p in plans:
                dset = f[p.name]
                for a, b in runs:
                    try:
                        arr = dset[a:b]
                    except Exception as exc:
                        if bf.error is not None:
                            err, bf.error = bf.error, None
                            raise err from None
                        raise FormatError(f"h5py cannot read rows {a}:{b} of dataset {p.name!r}: {exc}",
                                          uri=self.uri, format=FORMAT) from exc
                    if bf.error is not None:  # h5py may have read zeros for a failed read
                        err, bf.error = bf.error, None
                        raise err
                    arr.flags.writeable = False
                    columns[p.pos].add(a, arr)

    def _h5file(self) -> tuple[Any, BlockCachedFile]:
        if self._h5 is None or self._file is None:
            h5py = _h5py()
            bf = self._file
            if bf is None:
                bf = BlockCachedFile(self.store, self.uri, self.index.size, block_size=self.block_size,
                                     cache_bytes=self.block_cache_bytes)
            self._h5 = _open_h5(h5py, bf, self.uri)
            self._file = bf
        return self._h5, self._file

    def direct_datasets(self) -> dict[str, str]:
        """Which path each dataset is read by: ``"contiguous"``/``"chunked"`` (direct range
        requests, decoded here) or ``"h5py"`` (fallback through the block-cached file)."""
        return {p.key: p.layout for p in self._get_plans()}


class _Rows:
    """The rows of one dataset fetched for a batch: arrays, each holding a run of rows."""

    __slots__ = ("_arrays", "_sorted", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._arrays: list[np.ndarray] = []
        self._sorted = True

    def add(self, start: int, arr: np.ndarray) -> None:
        """``arr[k]`` is row ``start + k``; runs never overlap."""
        if self._starts and start < self._starts[-1]:
            self._sorted = False
        self._starts.append(start)
        self._arrays.append(arr)

    def take(self, rows: Sequence[int]) -> list[Any]:
        """Row values in the order of ``rows`` (each must lie in an added run)."""
        if not self._sorted:
            order = sorted(range(len(self._starts)), key=self._starts.__getitem__)
            self._starts = [self._starts[k] for k in order]
            self._arrays = [self._arrays[k] for k in order]
            self._sorted = True
        starts, arrays = self._starts, self._arrays
        if not rows:
            return []
        first, last = rows[0], rows[-1]
        if last - first == len(rows) - 1:  # maybe ascending consecutive rows inside one run
            k = bisect.bisect_right(starts, first) - 1
            arr = arrays[k]
            if last - starts[k] < len(arr) and (isinstance(rows, range) or list(rows) == list(range(first, last + 1))):
                return list(arr[first - starts[k] : last + 1 - starts[k]])
        out = []
        for r in rows:
            k = bisect.bisect_right(starts, r) - 1
            out.append(arrays[k][r - starts[k]])
        return out


class _Plan:
    """Everything needed to read one dataset, derived once from the index."""

    def __init__(self, idx: HDF5Index, d: int, key: str, pos: int) -> None:
        self.key = key
        self.name = idx.names[d]
        self.pos = pos  # position in the reader's list of datasets
        self.layout = idx.layouts[d]
        self.shape = idx.dataset_shape(d)
        self.chunk_shape = idx.dataset_chunk_shape(d)
        lo, hi = int(idx.chunk_start[d]), int(idx.chunk_start[d + 1])
        self._grid = idx.chunk_grid[lo:hi]
        self._addr = idx.chunk_addr[lo:hi]
        self._nbytes = idx.chunk_nbytes[lo:hi]
        self._mask = idx.chunk_mask[lo:hi]
        self.pipeline = _decode_pipeline(idx.filters[d])
        if self.layout == H5PY:
            self.dtype = np.dtype("O")
            return
        self.dtype = np.dtype(idx.dtypes[d])
        self.fill = np.frombuffer(bytes.fromhex(idx.fill_values[d]), dtype=self.dtype)[0] \
            if idx.fill_values[d] else np.zeros((), self.dtype)[()]
        self.row_nbytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.chunk_nbytes = int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize
        self.addr = int(self._addr[0]) if self.layout == CONTIGUOUS and len(self._addr) else None
        self.block_rows = max(1, self.chunk_shape[0])
        self.grid_shape = tuple(-(-n // max(1, c)) for n, c in zip(self.shape, self.chunk_shape, strict=True))
        self.inner = int(np.prod(self.grid_shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    def constant_rows(self, a: int, b: int) -> np.ndarray:
        arr = np.full((b - a, *self.shape[1:]), self.fill, dtype=self.dtype)
        arr.flags.writeable = False
        return arr

    def block_span(self, blk: int) -> tuple[int, int]:
        a = blk * self.block_rows
        return a, min(a + self.block_rows, self.shape[0])

    def chunks_of_block(self, blk: int) -> tuple[int, int]:
        """Index range (into this dataset's chunk arrays) of the stored chunks of row-block ``blk``."""
        first = blk * self.inner
        lo = int(np.searchsorted(self._grid, first, side="left"))
        hi = int(np.searchsorted(self._grid, first + self.inner, side="left"))
        return lo, hi

    def grid_of(self, c: int) -> int:
        return int(self._grid[c])

    def addr_of(self, c: int) -> int:
        return int(self._addr[c])

    def nbytes_of(self, c: int) -> int:
        return int(self._nbytes[c])

    def mask_of(self, c: int) -> int:
        return int(self._mask[c])


class _HDF5ChunkDecoder:
    """Decodes chunks of a filter pipeline Python cannot run (lzf, szip, plugins...) with HDF5.

    The raw chunk goes into a one-chunk dataset of an in-memory file that has the same
    dtype, chunk shape and pipeline (``write_direct_chunk``) and is read back, so HDF5's
    own filters decode it. Not thread-safe: the reader serialises calls.
    """

    def __init__(self, p: _Plan, pipeline: list[tuple[int, int, tuple[int, ...]]], uri: str) -> None:
        h5py = _h5py()
        self.uri, self.name, self.shape, self.dtype = uri, p.name, p.chunk_shape, p.dtype
        self._file = h5py.File(f"s3dlio-hdf5-scratch-{uuid.uuid4().hex}", "w", driver="core",
                               backing_store=False)
        try:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(p.chunk_shape)
            for code, flags, cd in pipeline:
                if not h5py.h5z.filter_avail(code):
                    raise FormatError(
                        f"dataset {p.name!r} uses HDF5 filter {code} ({FILTER_NAMES.get(code, 'plugin')}), "
                        f"which this h5py cannot decode (a plugin package such as hdf5plugin may provide it)",
                        uri=uri, format=FORMAT)
                dcpl.set_filter(code, flags, cd)
            space = h5py.h5s.create_simple(p.chunk_shape)
            tid = h5py.h5t.py_create(p.dtype)
            self._dsid = h5py.h5d.create(self._file.id, b"chunk", tid, space, dcpl=dcpl)
        except BaseException:
            self.close()
            raise
        self._h5s_all = h5py.h5s.ALL
        self._origin = (0,) * len(p.chunk_shape)

    def decode(self, raw: memoryview, offset: int) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        try:
            self._dsid.write_direct_chunk(self._origin, bytes(raw), 0)
            self._dsid.read(self._h5s_all, self._h5s_all, out)
        except Exception as exc:
            raise FormatError(f"chunk of dataset {self.name!r} does not decode: {exc}", uri=self.uri,
                              format=FORMAT, offset=offset) from exc
        out.flags.writeable = False
        return out

    def close(self) -> None:
        _close_quietly(self._file)


# ---------------------------------------------------------------------- decoding helpers


def _run_python_pipeline(raw: memoryview, pipeline: list[tuple[int, int, tuple[int, ...]]], expected: int,
                         itemsize: int, *, uri: str, name: str, offset: int) -> Any:
    """Undo the deflate/shuffle/fletcher32 filters applied to a chunk (in reverse order)."""
    data: Any = raw
    for code, _flags, cd in reversed(pipeline):
        if code == FILTER_FLETCHER32:
            if len(data) < 4:
                raise FormatError(f"chunk of dataset {name!r} is too short for its fletcher32 checksum",
                                  uri=uri, format=FORMAT, offset=offset)
            body = memoryview(data)[:-4]
            stored = int.from_bytes(bytes(memoryview(data)[-4:]), "little")
            computed = fletcher32(body)
            if stored not in (computed, _byteswap32(computed)):
                raise FormatError(f"fletcher32 checksum mismatch in a chunk of dataset {name!r} "
                                  f"(stored {stored:#010x}, computed {computed:#010x})",
                                  uri=uri, format=FORMAT, offset=offset)
            data = body
        elif code == FILTER_DEFLATE:
            try:
                data = zlib.decompress(data, 15, max(expected, 1))
            except zlib.error as exc:
                raise FormatError(f"chunk of dataset {name!r} is not a valid deflate stream: {exc}",
                                  uri=uri, format=FORMAT, offset=offset) from None
        elif code == FILTER_SHUFFLE:
            data = unshuffle(data, cd[0] if cd else itemsize)
    if len(data) != expected:
        raise FormatError(f"chunk of dataset {name!r} decodes to {len(data)} bytes, expected {expected}",
                          uri=uri, format=FORMAT, offset=offset)
    return data


def unshuffle(data: Any, elem_size: int) -> np.ndarray:
    """Undo HDF5's shuffle filter: byte j of every element was stored in plane j.

    >>> unshuffle(b"\\x01\\x02\\x00\\x00", 2).tobytes()
    b'\\x01\\x00\\x02\\x00'
    """
    src = np.frombuffer(data, dtype=np.uint8)
    n = len(src) // elem_size if elem_size > 1 else 0
    if n <= 1:
        return src
    out = np.empty(len(src), dtype=np.uint8)
    body = out[: n * elem_size].reshape(n, elem_size)
    planes = src[: n * elem_size].reshape(elem_size, n)
    # One strided copy per byte plane is several times faster than planes.T.copy().
    for j in range(elem_size):
        body[:, j] = planes[j]
    out[n * elem_size :] = src[n * elem_size :]
    return out


def fletcher32(data: Any) -> int:
    """HDF5's Fletcher-32 checksum of ``data`` (16-bit big-endian words, sums modulo 65535).

    >>> hex(fletcher32(b"abcde"))
    '0x4ff029c7'
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf) // 2
    words = buf[: 2 * n].view(">u2").astype(np.uint64)
    # sum1 = sum of words; sum2 = sum of the running sum1 = sum_k w_k * (n - k). Reducing
    # the weights first keeps every product below 2**32 and the total below 2**64.
    weights = (np.arange(n, 0, -1, dtype=np.uint64)) % np.uint64(65535)
    s1 = int(words.sum())
    s2 = int((words * weights).sum())
    if len(buf) % 2:
        s1 += int(buf[-1]) << 8
        s2 += s1
    return (_fold(s2) << 16) | _fold(s1)


def _fold(s: int) -> int:
    # HDF5 folds with (x & 0xffff) + (x >> 16): the value is s mod 65535, but 65535 (not 0)
    # for a positive multiple of 65535.
    r = s % 65535
    return 65535 if r == 0 and s > 0 else r


def _byteswap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


# ---------------------------------------------------------------------- index helpers


@dataclasses.dataclass
class _Described:
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: str
    layout: str
    filters: str
    fill: str
    grid: Sequence[int] | np.ndarray
    addr: Sequence[int] | np.ndarray
    nbytes: Sequence[int] | np.ndarray
    mask: Sequence[int] | np.ndarray


def _describe(h5py: Any, dset: Any, name: str, uri: str, size: int) -> _Described:
    shape = tuple(int(n) for n in dset.shape)
    dcpl = dset.id.get_create_plist()
    layout = dcpl.get_layout()
    pipeline = []
    for i in range(dcpl.get_nfilters()):
        code, flags, cd, _ = dcpl.get_filter(i)
        pipeline.append((int(code), int(flags), tuple(int(v) for v in cd)))
    dtype = dset.dtype  # built from the HDF5 type on every access: read it once
    fallback = _Described(shape, shape, dtype.str, H5PY, _encode_pipeline(pipeline), "", [], [], [], [])
    external = dcpl.get_external_count() if hasattr(dcpl, "get_external_count") else 0
    if not _direct_dtype(h5py, dset, dtype) or external:
        return fallback
    fill = np.asarray(dset.fillvalue, dtype=dtype).tobytes().hex()
    itemsize = dtype.itemsize
    grid: Sequence[int] | np.ndarray = []
    addr: Sequence[int] | np.ndarray = []
    nbytes: Sequence[int] | np.ndarray = []
    mask: Sequence[int] | np.ndarray = []
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dset.id.get_offset()
        stored = int(dset.id.get_storage_size())
        if offset is not None:
            if stored != int(np.prod(shape, dtype=np.int64)) * itemsize:
                return fallback
            grid, addr, nbytes, mask = [0], [int(offset)], [stored], [0]
        result = _Described(shape, shape, dtype.str, CONTIGUOUS, "", fill, grid, addr, nbytes, mask)
    elif layout == h5py.h5d.CHUNKED:
        chunk = tuple(int(c) for c in dset.chunks)
        grid_shape = tuple(-(-n // c) for n, c in zip(shape, chunk, strict=True))
        infos = _chunk_infos(dset)
        ndim = len(shape)
        offsets = np.array([i.chunk_offset for i in infos], dtype=np.int64).reshape(len(infos), ndim)
        meta = np.array([(i.byte_offset, i.size, i.filter_mask) for i in infos], dtype=np.int64).reshape(-1, 3)
        coords = offsets // np.array(chunk, dtype=np.int64)
        # chunks left beyond the current extent after a resize are not part of the dataset
        keep = (coords < np.array(grid_shape, dtype=np.int64)).all(axis=1)
        coords, meta = coords[keep], meta[keep]
        linear = np.ravel_multi_index(tuple(coords.T), grid_shape) if len(coords) else np.zeros(0, np.int64)
        order = np.argsort(linear, kind="stable")
        grid = np.asarray(linear, dtype=np.int64)[order]
        addr, nbytes, mask = (meta[order, k] for k in range(3))
        result = _Described(shape, chunk, dtype.str, CHUNKED, _encode_pipeline(pipeline), fill,
                            grid, addr, nbytes, mask)
    else:
        return fallback
    ends = np.asarray(result.addr, dtype=np.int64) + np.asarray(result.nbytes, dtype=np.int64)
    past = np.flatnonzero(ends > size)
    if len(past):
        off, n = int(result.addr[past[0]]), int(result.nbytes[past[0]])
        raise FormatError(
            f"truncated file: data of dataset {name!r} at bytes [{off}, {off + n}) lies past the end of "
            f"the object ({size} bytes)", uri=uri, format=FORMAT, offset=off)
    return result


def _chunk_infos(dset: Any) -> list[Any]:
    """Every stored chunk's StoreInfo; ``chunk_iter`` (one pass) where HDF5 has it."""
    dsid = dset.id
    infos: list[Any] = []
    chunk_iter = getattr(dsid, "chunk_iter", None)
    if chunk_iter is not None:
        try:
            chunk_iter(infos.append)
            return infos
        except (NotImplementedError, AttributeError, TypeError):
            infos = []
    return [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]


def _direct_dtype(h5py: Any, dset: Any, dt: np.dtype) -> bool:
    """True when the stored bytes of ``dset`` are exactly the numpy layout of its dtype ``dt``."""
    if dt.hasobject or dt.subdtype is not None or dt.kind not in "biufcSV":
        return False
    if dt.fields is not None:
        return False
    tid = dset.id.get_type()
    if tid.get_size() != dt.itemsize:
        return False
    cls = tid.get_class()
    if cls == h5py.h5t.STRING and tid.is_variable_str():
        return False
    if dt.kind == "c":
        if cls != h5py.h5t.COMPOUND or tid.get_nmembers() != 2:
            return False
        if tid.get_member_offset(1) != dt.itemsize // 2:
            return False
        return _same_order(h5py, tid.get_member_type(0), dt)
    if dt.kind in "iufb" and dt.itemsize > 1:
        return _same_order(h5py, tid, dt)
    return True


def _same_order(h5py: Any, tid: Any, dt: np.dtype) -> bool:
    try:
        order = tid.get_order()
    except Exception:
        return False
    little = dt.byteorder == "<" or (dt.byteorder == "=" and sys.byteorder == "little")
    return bool(order == (h5py.h5t.ORDER_LE if little else h5py.h5t.ORDER_BE))


def _open_h5(h5py: Any, bf: BlockCachedFile, uri: str) -> Any:
    """``h5py.File(bf, "r")`` with h5py's errors turned into ours."""
    try:
        f = h5py.File(bf, "r")
    except Exception as exc:
        if bf.error is not None:
            raise bf.error from None
        raise _open_error(bf, uri, exc) from exc
    _open_h5files.add(f)
    return f


def _open_error(bf: BlockCachedFile, uri: str, exc: BaseException) -> FormatError:
    text = str(exc)
    # The superblock may follow a user block of 512, 1024, 2048... bytes.
    offsets = [0] + [512 << k for k in range(40) if (512 << k) + 8 <= bf.size]
    try:
        has_signature = any(bf.pread(off, 8) == HDF5_SIGNATURE for off in offsets)
    except S3dlioError:
        has_signature = True
    if not has_signature:
        return FormatError("not an HDF5 file (no HDF5 signature at byte 0 or after a user block)",
                           uri=uri, format=FORMAT, offset=0)
    if "truncated" in text:
        return FormatError(f"truncated file ({bf.size} bytes): {text}", uri=uri, format=FORMAT,
                           offset=bf.size)
    return FormatError(f"h5py cannot open it: {text}", uri=uri, format=FORMAT)


def _close_quietly(f: Any) -> None:
    try:
        with _gc_paused():
            f.close()
    except Exception as exc:
        log.debug("closing an HDF5 file failed: %s", exc)


def _runs(rows: Iterable[int]) -> list[tuple[int, int]]:
    """Half-open runs of consecutive values of sorted unique ``rows``."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out


def _normal(path: str) -> str:
    return path.strip("/")


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        what = "an integer >= 0" if allow_zero else "a positive integer"
        raise ConfigError(f"{name} must be {what} (got {name}={value!r})")


# ---------------------------------------------------------------------- writer


def write_hdf5(
    uri: str,
    data: Mapping[str, Any] | np.ndarray,
    *,
    store: Store,
    chunks: bool | int | tuple[int, ...] | None = None,
    compression: str | None = None,
    compression_opts: int | None = None,
    shuffle: bool = False,
    fletcher32: bool = False,
) -> None:
    """Write ``data`` (dataset path -> array; a bare array is written as ``"data"``) as one HDF5 object.

    Args:
        chunks: None: contiguous (h5py picks a chunk shape when a filter needs one); True:
            h5py's automatic chunk shape; an int ``n``: chunks of ``n`` rows along axis 0
            spanning the other axes (the natural choice for row samples); a tuple: that chunk
            shape for every dataset.
        compression: None, ``"gzip"`` (``compression_opts`` = level 0-9) or ``"lzf"``.
        shuffle, fletcher32: add HDF5's shuffle filter / Fletcher-32 checksums.

    Paths with ``/`` create groups (``"grp/x"``). HDF5 needs a seekable target, so the file
    is built in memory (an ``io.BytesIO``, measured faster than h5py's core driver and
    without the copy of ``get_file_image``) and handed to ``store.put`` as one buffer: peak
    memory is about the size of the file on top of the arrays.

    >>> import tempfile
    >>> uri = f"file://{tempfile.mkdtemp()}/w.h5"
    >>> write_hdf5(uri, {"grp/x": np.zeros((4, 3))}, store=Store.from_uri(uri), chunks=2)
    """
    h5py = _h5py()
    arrays = {"data": data} if isinstance(data, np.ndarray) else data
    if not isinstance(arrays, Mapping) or not arrays:
        raise ConfigError(f"write_hdf5 needs a non-empty mapping of dataset path -> array (got "
                          f"{type(data).__name__}) for {uri}")
    if compression not in (None, "gzip", "lzf"):
        raise ConfigError(f"compression must be None, 'gzip' or 'lzf' (got compression={compression!r}) "
                          f"for {uri}")
    if compression_opts is not None and compression != "gzip":
        raise ConfigError(f"compression_opts is the gzip level; it needs compression='gzip' "
                          f"(got compression={compression!r}) for {uri}")
    if isinstance(chunks, int) and not isinstance(chunks, bool) and chunks < 1:
        raise ConfigError(f"chunks as an int is rows per chunk and must be >= 1 (got chunks={chunks!r})")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, value in arrays.items():
            if not isinstance(name, str) or not name.strip("/"):
                raise ConfigError(f"dataset paths must be non-empty strings (got {name!r}) for {uri}")
            arr = np.asarray(value)
            kwargs: dict[str, Any] = {}
            if arr.ndim > 0:
                kwargs = {"compression": compression, "compression_opts": compression_opts,
                          "shuffle": shuffle, "fletcher32": fletcher32}
                if isinstance(chunks, int) and not isinstance(chunks, bool):
                    rows = min(chunks, max(arr.shape[0], 1))
                    kwargs["chunks"] = (rows, *(max(n, 1) for n in arr.shape[1:]))
                elif chunks is not None:
                    kwargs["chunks"] = chunks
            try:
                f.create_dataset(name, data=arr, **kwargs)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"cannot write dataset {name!r} (dtype {arr.dtype}, shape {arr.shape}) "
                                  f"to {uri}: {exc}") from exc
    view = buf.getbuffer()
    try:
        store.put(uri, view)
    finally:
        view.release()


__all__ = [
    "DEFAULT_BLOCK_CACHE_BYTES",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_CACHE_BYTES",
    "BlockCachedFile",
    "HDF5Index",
    "HDF5Reader",
    "fletcher32",
    "unshuffle",
    "write_hdf5",
]
