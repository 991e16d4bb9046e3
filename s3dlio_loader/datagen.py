"""Synthetic data with controlled dedup and compression ratios, synthetic datasets, templated puts.

Three things live here:

* :class:`DataGenerator` / :func:`generate_data`: a fast stream of bytes with a chosen
  dedup ratio (at 4 KiB-block level) and compression ratio (as zstd sees it), as s3dlio's
  ``generate_data(size, dedup, compress)``. ``compress=1, dedup=1`` gives unique,
  incompressible data at 10-15 GB/s per core into a reused buffer on an idle core
  (``python benchmarks/datagen.py``; about 2x s3dlio 0.10's ``generate_into_buffer``
  with one thread, measured side by side).
* :func:`generate_dataset`: Parquet, NPY, NPZ, TFRecord, HDF5 or raw objects under any URI
  prefix, written in parallel, with content fixed by a seed (:class:`DatasetSpec` recomputes
  any object's arrays, so a test can check what was written).
* :func:`put_template`: ``N`` generated objects named by a template
  (``"s3://bucket/obj-{}.bin"``), written concurrently, as s3dlio's ``put``.

How the generator works. Data is produced in 4 KiB blocks. A pool of ``POOL_BLOCKS`` random
blocks (256 KiB, it stays in the CPU cache) is drawn once from the seed; block number ``c``
of the stream is pool row ``c mod POOL_BLOCKS`` XOR-ed with a 64-bit key repeated over the
block, the key being a bijective mix (splitmix64) of the block counter. Distinct counters
give distinct keys, so every block of a stream differs from every other one, and no
compressor finds matches between them (two blocks built on the same pool row differ in
every 8-byte word). One numpy pass writes each byte once: that is the whole cost.

* ``compress=N``: only the first ``1/N`` of each block is random (in 8-byte words), the rest
  is zeros, so zstd compresses a block to about ``4096/N`` bytes: measured 1.99 for 2, 3.98
  for 4, 31 for 32; the per-block overhead shows above ~100 (223 for 256) and at least 8
  random bytes stay in each block (about 400 at most).
* ``dedup=N``: of the ``ceil(size/4096)`` blocks of one buffer, ``ceil(blocks/N)`` are unique;
  block ``j`` repeats unique block ``j mod unique``, so a repeat lies ``size/N`` bytes after
  its original. When that distance is within zstd's window (2 MiB at level 3 for large
  inputs, less for small ones) zstd removes the repeats too and its ratio approaches
  ``dedup * compress``; for larger buffers zstd sees only ``compress``.

Dedup applies within each call of :meth:`DataGenerator.fill` (each buffer); uniqueness holds
across calls of one generator and across the streams of :meth:`DataGenerator.fork`.

>>> a = generate_data(1 << 20, seed=7)
>>> len(a), a == generate_data(1 << 20, seed=7), a == generate_data(1 << 20)
(1048576, True, False)
>>> import zstandard
>>> round(len(a) / len(zstandard.ZstdCompressor(level=3).compress(bytes(generate_data(1 << 20, compress=4)))))
4
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from . import formats
from .errors import ConfigError
from .options import DatagenOptions
from .storage import Store, join_uri, parse_uri

#: Dedup granularity: a block is the unit that is unique or a repeat.
BLOCK_SIZE = 4096
#: Random blocks drawn once per seed; output blocks are pool rows XOR a per-block key.
POOL_BLOCKS = 64
#: Block counters of two streams (:meth:`DataGenerator.fork`) are this far apart: a stream
#: holds 2**40 blocks (4 PiB) before it would meet the next one.
STREAM_BLOCKS = 1 << 40

_WORDS = BLOCK_SIZE // 8
_MASK = (1 << 64) - 1
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

T = TypeVar("T")
R = TypeVar("R")


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1 or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number >= 1 (got {name}={value!r}); 1 means no {name}")
    return float(value)


def _check_seed(seed: Any, *, allow_none: bool = True) -> int | None:
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0{' or None' if allow_none else ''} (got {seed=})")
    return int(seed)


def _as_u8(buffer: Any) -> np.ndarray:
    """A writable 1-D uint8 view of any contiguous writable buffer (bytearray, numpy, mmap...)."""
    if isinstance(buffer, np.ndarray):
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ConfigError("fill needs a C-contiguous, writable numpy array")
        return buffer.reshape(-1).view(np.uint8)
    try:
        view = memoryview(buffer)
    except TypeError:
        raise ConfigError(f"fill needs a writable bytes-like buffer (got {type(buffer).__name__})") from None
    if view.readonly:
        raise ConfigError(f"fill needs a writable buffer; {type(buffer).__name__} is read-only (use a bytearray)")
    if not view.c_contiguous:
        raise ConfigError("fill needs a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return np.frombuffer(view, dtype=np.uint8)


class DataGenerator:
    """A stream of generated bytes with dedup and compression ratios, written into your buffers.

    Args:
        dedup: about ``dedup``:1 at 4 KiB-block level within each filled buffer (1: every
            block unique).
        compress: about ``compress``:1 with zstd (1: incompressible).
        seed: the same seed gives the same stream; None draws a fresh seed from the OS, so
            every generator (and every :func:`generate_data` call) differs.
        stream: which of the seed's independent streams (see :meth:`fork`).

    :meth:`fill` allocates nothing per call (small scratch arrays grow to the largest buffer
    seen, about 1/256 of its size). A generator is not thread-safe: give each thread its own
    :meth:`fork`.

    >>> gen = DataGenerator(seed=1)
    >>> buf = bytearray(10_000)
    >>> gen.fill(buf)
    10000
    >>> first = bytes(buf); gen.fill(buf); bytes(buf) != first
    10000
    True
    """

    def __init__(self, dedup: float = 1, compress: float = 1, seed: int | None = None, *, stream: int = 0) -> None:
        self.dedup = _check_ratio("dedup", dedup)
        self.compress = _check_ratio("compress", compress)
        self.seed = _check_seed(seed)
        bitgen = np.random.PCG64(np.random.SeedSequence(self.seed))
        self._pool: np.ndarray = bitgen.random_raw(POOL_BLOCKS * _WORDS).reshape(POOL_BLOCKS, _WORDS)
        self._key_base = int(bitgen.random_raw())
        self._random_words = max(1, min(_WORDS, round(_WORDS / self.compress)))
        self._set_stream(stream)

    def _set_stream(self, stream: int) -> None:
        if isinstance(stream, bool) or not isinstance(stream, int | np.integer) or stream < 0:
            raise ConfigError(f"stream must be an integer >= 0 (got {stream=})")
        self.stream = int(stream)
        self.blocks = 0  # unique blocks produced so far in this stream
        self._arange = np.empty(0, np.uint64)
        self._keys = np.empty(0, np.uint64)
        self._tmp = np.empty(0, np.uint64)
        self._tail = np.empty((1, _WORDS), np.uint64)

    def fork(self, stream: int) -> DataGenerator:
        """A generator of stream ``stream`` of the same seed, pool and ratios (cheap: no new pool).

        Streams are independent and never repeat each other's blocks; ``fork(i)`` gives the
        same bytes whichever generator of the seed it is called on, which makes per-object
        content reproducible under any thread schedule.
        """
        other = object.__new__(DataGenerator)
        other.dedup, other.compress, other.seed = self.dedup, self.compress, self.seed
        other._pool, other._key_base, other._random_words = self._pool, self._key_base, self._random_words
        other._set_stream(stream)
        return other

    def __repr__(self) -> str:
        return (f"DataGenerator(dedup={self.dedup:g}, compress={self.compress:g}, seed={self.seed!r}, "
                f"stream={self.stream})")

    # ------------------------------------------------------------------ generation

    def generate(self, size: int) -> bytearray:
        """``size`` new bytes of the stream (a fresh bytearray: allocation-bound for large sizes)."""
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise ConfigError(f"size must be an integer >= 0 (got {size=})")
        out = bytearray(int(size))
        self.fill(out)
        return out

    def fill(self, buffer: Any) -> int:
        """Overwrite all of ``buffer`` (bytearray, writable memoryview, numpy array, mmap...) with
        the next bytes of the stream; return the number of bytes written."""
        view = _as_u8(buffer)
        size = view.size
        if size == 0:
            return 0
        nfull, tail = divmod(size, BLOCK_SIZE)
        nblocks = nfull + (tail > 0)
        unique = min(nblocks, math.ceil(nblocks / self.dedup))
        full = view[: nfull * BLOCK_SIZE].view(np.uint64).reshape(nfull, _WORDS)
        made = min(unique, nfull)
        if made:
            self._blocks_into(full[:made], self.blocks)
        if tail:
            if nfull < unique:  # the partial last block is a unique one
                self._blocks_into(self._tail, self.blocks + made)
                view[nfull * BLOCK_SIZE :] = self._tail.reshape(-1).view(np.uint8)[:tail]
            else:
                src = (nfull % unique) * BLOCK_SIZE
                view[nfull * BLOCK_SIZE :] = view[src : src + tail]
        if nfull > unique:  # repeats: block j is unique block j mod unique
            periods, rest = divmod(nfull - unique, unique)
            if periods:
                np.copyto(full[unique : unique * (periods + 1)].reshape(periods, unique, _WORDS), full[:unique])
            if rest:
                full[unique * (periods + 1) :] = full[:rest]
        self.blocks += unique
        return size

    def _blocks_into(self, out: np.ndarray, counter: int) -> None:
        """Write unique blocks number ``counter...`` of this stream into ``out`` (rows of 512 words)."""
        n = out.shape[0]
        keys = self._mixed_keys(n, counter)
        r = self._random_words
        pool = self._pool
        groups, rest = divmod(n, POOL_BLOCKS)
        if groups:
            dst = out[: groups * POOL_BLOCKS].reshape(groups, POOL_BLOCKS, _WORDS)
            np.bitwise_xor(pool[None, :, :r], keys[: groups * POOL_BLOCKS].reshape(groups, POOL_BLOCKS, 1),
                           out=dst if r == _WORDS else dst[:, :, :r])
        if rest:
            start = groups * POOL_BLOCKS
            np.bitwise_xor(pool[:rest, :r], keys[start:, None], out=out[start:, :r])
        if r < _WORDS:
            out[:, r:] = 0

    def _mixed_keys(self, n: int, counter: int) -> np.ndarray:
        """splitmix64 of ``key_base + stream * STREAM_BLOCKS + counter + i`` for i < n (a bijection)."""
        if self._arange.size < n:
            size = max(n, 2 * self._arange.size)
            self._arange = np.arange(size, dtype=np.uint64)
            self._keys = np.empty(size, np.uint64)
            self._tmp = np.empty(size, np.uint64)
        start = (self._key_base + self.stream * STREAM_BLOCKS + counter) & _MASK
        z, t = self._keys[:n], self._tmp[:n]
        np.add(self._arange[:n], np.uint64(start), out=z)  # array arithmetic wraps modulo 2**64
        np.right_shift(z, 30, out=t)
        np.bitwise_xor(z, t, out=z)
        np.multiply(z, _MIX1, out=z)
        np.right_shift(z, 27, out=t)
        np.bitwise_xor(z, t, out=z)
        np.multiply(z, _MIX2, out=z)
        np.right_shift(z, 31, out=t)
        np.bitwise_xor(z, t, out=z)
        return z


def generate_data(size: int, dedup: float = 1, compress: float = 1, seed: int | None = None) -> bytearray:
    """``size`` bytes with about ``dedup``:1 block dedup and ``compress``:1 zstd compression.

    Returns a new :class:`bytearray` (accepted by :meth:`Store.put` without a copy). Without
    a seed every call returns different data; with one, the same data. Producing into fresh
    memory is bound by page faults (about 1.5 GB/s here); to stream at the generator's own
    speed, :meth:`DataGenerator.fill` a reused buffer instead.

    >>> len(generate_data(5000, dedup=2, compress=2, seed=0))
    5000
    """
    return DataGenerator(dedup, compress, seed).generate(size)


# ---------------------------------------------------------------------- concurrency helper


def _parallel(fn: Callable[[T], R], items: Iterable[T], workers: int,
              on_result: Callable[[R], None] | None = None, *, name: str = "s3dlio-datagen") -> None:
    """Run ``fn`` over ``items`` in ``workers`` threads, at most ``2 * workers`` submitted at a time.

    ``items`` is consumed lazily. The first exception is raised after cancelling what has
    not started.
    """
    window = 2 * workers
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: set[cf.Future[R]] = set()
        try:
            for item in items:
                pending.add(pool.submit(fn, item))
                if len(pending) >= window:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        result = fut.result()
                        if on_result is not None:
                            on_result(result)
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _progress_bar(progress: bool | None, total: int, desc: str, unit: str = "obj") -> Any:
    """A tqdm bar on stderr; ``progress=None`` shows it only when stderr is a terminal."""
    from tqdm import tqdm

    if progress is None:
        try:
            progress = bool(sys.stderr.isatty())
        except (AttributeError, ValueError):
            progress = False
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------- datasets

#: File extension of each generated format.
EXTENSIONS: dict[str, str] = {
    "parquet": ".parquet",
    "npy": ".npy",
    "npz": ".npz",
    "tfrecord": ".tfrecord",
    "hdf5": ".h5",
    "raw": ".bin",
}
#: Parquet layouts of the sample data (``id`` and ``label`` int64 columns are always there).
PARQUET_SCHEMAS = ("binary", "list", "columns")
#: ``parquet_schema="columns"`` makes one column per value; more than this is refused.
MAX_PARQUET_COLUMNS = 4096


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What :func:`generate_dataset` writes: every object's content follows from these fields.

    Each object holds ``samples_per_object`` samples. Sample ``i`` of object ``k`` has the
    global id ``k * samples_per_object + i``, a ``data`` array of ``sample_shape`` and
    ``dtype``, and an int64 ``label`` in ``[0, num_classes)``. Per format:

    * ``parquet``: one row per sample, columns ``id``, ``label`` and the data as
      ``parquet_schema`` says: ``"binary"`` (``data``: fixed-size binary of the sample's
      bytes), ``"list"`` (``data``: fixed-size list of ``dtype`` values, flattened) or
      ``"columns"`` (one scalar column ``f0``, ``f1``... per value); row groups of
      ``row_group_size`` rows.
    * ``npy``: the data array ``(samples, *sample_shape)`` alone (an .npy holds one array;
      labels are available from :meth:`arrays`).
    * ``npz`` and ``hdf5``: arrays/datasets ``data``, ``label`` and ``id``.
    * ``tfrecord``: one ``tf.train.Example`` per sample: ``data`` (bytes of the sample),
      ``label`` and ``id`` (int64).
    * ``raw``: the samples' bytes back to back (fixed-size records, no label).

    Integer and bool data come from :class:`DataGenerator` (``dedup``/``compress`` apply);
    float data are uniform in [0, 1) (``dedup`` and ``compress`` must be 1).

    >>> spec = DatasetSpec("npz", num_objects=2, samples_per_object=3, sample_shape=(4,))
    >>> spec.object_name(1), spec.arrays(1)["id"].tolist()
    ('part-00001.npz', [3, 4, 5])
    """

    format: str
    num_objects: int
    samples_per_object: int
    sample_shape: tuple[int, ...] = (1024,)
    dtype: str = "uint8"
    num_classes: int = 10
    seed: int = 0
    dedup: float = 1
    compress: float = 1
    row_group_size: int | None = None
    parquet_schema: str = "binary"
    name: str = "part"

    def __post_init__(self) -> None:
        if self.format not in EXTENSIONS:
            raise ConfigError(f"unknown dataset format {self.format!r}; use one of {sorted(EXTENSIONS)}")
        for field in ("num_objects", "samples_per_object", "num_classes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be an integer >= 1 (got {field}={value!r})")
        shape = (self.sample_shape,) if isinstance(self.sample_shape, int) else tuple(self.sample_shape)
        if any(isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0 for d in shape):
            raise ConfigError(f"sample_shape must be non-negative integers (got sample_shape={self.sample_shape!r})")
        object.__setattr__(self, "sample_shape", tuple(int(d) for d in shape))
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            raise ConfigError(f"dtype {self.dtype!r} is not a numpy dtype") from None
        if dt.kind not in "buif":
            raise ConfigError(f"dtype must be a bool, integer or float type (got dtype={self.dtype!r})")
        object.__setattr__(self, "dtype", dt.name)
        _check_seed(self.seed, allow_none=False)
        _check_ratio("dedup", self.dedup)
        _check_ratio("compress", self.compress)
        if dt.kind == "f" and (self.dedup != 1 or self.compress != 1):
            raise ConfigError(f"dedup and compress apply to integer/bool data; {dt.name} data is uniform "
                              f"random (got dedup={self.dedup!r}, compress={self.compress!r})")
        if self.row_group_size is not None and (not isinstance(self.row_group_size, int) or self.row_group_size < 1):
            raise ConfigError(f"row_group_size must be an integer >= 1 or None (got {self.row_group_size!r})")
        if self.row_group_size is not None and self.format != "parquet":
            raise ConfigError(f"row_group_size applies to parquet datasets, not {self.format}")
        if self.parquet_schema not in PARQUET_SCHEMAS:
            raise ConfigError(f"parquet_schema must be one of {PARQUET_SCHEMAS} (got {self.parquet_schema!r})")
        wide = self.values_per_sample > MAX_PARQUET_COLUMNS
        if self.format == "parquet" and self.parquet_schema == "columns" and wide:
            raise ConfigError(f"parquet_schema='columns' makes one column per value; {self.values_per_sample} is "
                              f"more than {MAX_PARQUET_COLUMNS}: use 'binary' or 'list'")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty object name prefix without '/' (got {self.name!r})")

    @property
    def values_per_sample(self) -> int:
        """Elements of one sample's data array."""
        return math.prod(self.sample_shape)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's data array."""
        return self.values_per_sample * np.dtype(self.dtype).itemsize

    def object_name(self, index: int) -> str:
        """``part-00042.parquet``: the name of object ``index`` (zero-padded to sort in order)."""
        width = max(5, len(str(self.num_objects - 1)))
        return f"{self.name}-{index:0{width}d}{EXTENSIONS[self.format]}"

    def object_uri(self, prefix: str, index: int) -> str:
        """The URI of object ``index`` under ``prefix``."""
        return join_uri(prefix, self.object_name(index))

    def generator(self) -> DataGenerator:
        """The generator whose stream ``index`` makes object ``index``'s integer data."""
        return DataGenerator(self.dedup, self.compress, self.seed)

    def arrays(self, index: int, generator: DataGenerator | None = None) -> dict[str, np.ndarray]:
        """Object ``index``'s samples: ``{"data": (n, *sample_shape), "label": (n,), "id": (n,)}``.

        Deterministic in (the spec, ``index``); ``generator`` (from :meth:`generator`) saves
        rebuilding the random pool when called for many objects.
        """
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < self.num_objects:
            raise ConfigError(f"object index must be in [0, {self.num_objects}) (got {index=})")
        index = int(index)
        n = self.samples_per_object
        dt = np.dtype(self.dtype)
        rng = np.random.default_rng([self.seed, index])
        if dt.kind == "f":
            values = rng.random((n, *self.sample_shape), dtype=np.float64 if dt.itemsize == 8 else np.float32)
            data = values.astype(dt, copy=False)
        else:
            raw = np.empty(n * self.sample_bytes, np.uint8)
            (generator or self.generator()).fork(index).fill(raw)
            data = raw.view(np.bool_) != 0 if dt.kind == "b" else raw.view(dt)
            data = data.reshape(n, *self.sample_shape)
        labels = rng.integers(0, self.num_classes, n, dtype=np.int64)
        ids = np.arange(index * n, (index + 1) * n, dtype=np.int64)
        return {"data": data, "label": labels, "id": ids}

    def payload(self, arrays: Mapping[str, np.ndarray]) -> Any:
        """What the format's writer takes for one object with these arrays."""
        data, labels, ids = arrays["data"], arrays["label"], arrays["id"]
        if self.format == "npy":
            return data
        if self.format in ("npz", "hdf5"):
            return {"data": data, "label": labels, "id": ids}
        if self.format == "raw":
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)  # write_raw takes any buffer
        if self.format == "tfrecord":  # dicts: the writer encodes them as tf.train.Example
            rows = np.ascontiguousarray(data).reshape(len(ids), -1).view(np.uint8)
            return [{"data": rows[i].tobytes(), "label": int(labels[i]), "id": int(ids[i])}
                    for i in range(len(ids))]
        return self._parquet_table(data, labels, ids)

    def _parquet_table(self, data: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> Any:
        import pyarrow as pa

        n = len(ids)
        columns: dict[str, Any] = {"id": pa.array(ids), "label": pa.array(labels)}
        flat = np.ascontiguousarray(data).reshape(n, -1)
        if self.parquet_schema == "binary":
            buf = pa.py_buffer(flat.view(np.uint8).reshape(-1))
            columns["data"] = pa.Array.from_buffers(pa.binary(self.sample_bytes), n, [None, buf])
        elif self.parquet_schema == "list":
            columns["data"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), self.values_per_sample)
        else:
            for j in range(flat.shape[1]):
                columns[f"f{j}"] = pa.array(flat[:, j])
        return pa.table(columns)


def generate_dataset(
    uri_prefix: str | os.PathLike[str],
    format: str,
    num_objects: int,
    samples_per_object: int,
    *,
    sample_shape: int | Sequence[int] | None = None,
    dtype: str = "uint8",
    record_size: int | None = None,
    num_classes: int = 10,
    seed: int = 0,
    dedup: float = 1,
    compress: float = 1,
    row_group_size: int | None = None,
    parquet_schema: str = "binary",
    name: str = "part",
    writer_options: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    store: Store | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Write a synthetic dataset of ``num_objects`` objects under ``uri_prefix``; return their URIs.

    Args:
        uri_prefix: any URI (``s3://bucket/train/``, ``file:///data/ds``, a local path...).
            The returned URIs are canonical (``file:///abs/path/part-00000.npy``).
        format: ``parquet``, ``npy``, ``npz``, ``tfrecord``, ``hdf5`` or ``raw``.
        num_objects, samples_per_object: the dataset's size.
        sample_shape: shape of one sample's data (default ``(1024,)``).
        dtype: numpy dtype of the data (default ``uint8``).
        record_size: shorthand for ``sample_shape=(record_size,), dtype="uint8"`` (raw and
            TFRecord users think in record bytes).
        num_classes: labels are uniform in ``[0, num_classes)``.
        seed: the content depends only on the seed and the other arguments (never on
            ``workers``); :class:`DatasetSpec` recomputes it.
        dedup, compress: ratios of the integer data (see :class:`DataGenerator`).
        row_group_size: Parquet rows per row group.
        parquet_schema: ``binary``, ``list`` or ``columns`` (see :class:`DatasetSpec`).
        name: object names are ``{name}-00000{ext}``...
        writer_options: passed to the format's writer (``compression="zstd"`` for Parquet,
            ``chunks=...`` for HDF5, ``compress=True`` for NPZ...).
        storage_options, store: where to write (a Store overrides storage_options).
        workers: threads building and writing objects (default ``DatagenOptions.workers``).
        progress: tqdm bar on stderr; None shows it only when stderr is a terminal.

    The layout of each format is described in :class:`DatasetSpec`.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> uris = generate_dataset(d, "npy", num_objects=3, samples_per_object=4, sample_shape=(2, 2))
    >>> [u.rsplit("/", 1)[1] for u in uris]
    ['part-00000.npy', 'part-00001.npy', 'part-00002.npy']
    >>> np.load(uris[2][len("file://"):]).shape
    (4, 2, 2)
    """
    uri_prefix = os.fspath(uri_prefix)
    if record_size is not None:
        if sample_shape is not None:
            raise ConfigError(f"give sample_shape or record_size, not both (got sample_shape={sample_shape!r}, "
                              f"record_size={record_size!r})")
        if isinstance(record_size, bool) or not isinstance(record_size, int) or record_size < 1:
            raise ConfigError(f"record_size must be an integer >= 1 (got {record_size=})")
        sample_shape, dtype = (record_size,), "uint8"
    shape = (1024,) if sample_shape is None else sample_shape
    spec = DatasetSpec(
        format, num_objects, samples_per_object,
        sample_shape=(shape,) if isinstance(shape, int) else tuple(shape), dtype=dtype,
        num_classes=num_classes, seed=seed, dedup=dedup, compress=compress, row_group_size=row_group_size,
        parquet_schema=parquet_schema, name=name,
    )
    opts = DatagenOptions.from_env() if workers is None else DatagenOptions.from_env(workers=workers)
    store = store if store is not None else Store.from_uri(uri_prefix, storage_options)
    extra = dict(writer_options or {})
    if spec.format == "parquet" and spec.row_group_size is not None:
        extra.setdefault("row_group_size", spec.row_group_size)
    if spec.format == "raw" and extra:
        raise ConfigError(f"raw objects take no writer_options (got {sorted(extra)})")
    base = spec.generator()
    prefix = parse_uri(uri_prefix).uri
    uris = [spec.object_uri(prefix, i) for i in range(spec.num_objects)]

    def write_one(index: int) -> int:
        formats.write(uris[index], spec.payload(spec.arrays(index, base)), format=spec.format, store=store, **extra)
        return index

    with _progress_bar(progress, spec.num_objects, f"gen {spec.format}") as bar:
        _parallel(write_one, range(spec.num_objects), min(opts.workers, spec.num_objects),
                  lambda _i: bar.update(1))
    return uris


# ---------------------------------------------------------------------- templated puts


def expand_template(uri_template: str, num: int, start: int = 0) -> Iterator[str]:
    """``uri_template.format(i)`` for ``i`` in ``start .. start + num - 1``.

    The template holds one replacement field: ``{}``, or with a format spec, ``{:06d}``.

    >>> list(expand_template("s3://b/obj-{:03d}.bin", 2, start=9))
    ['s3://b/obj-009.bin', 's3://b/obj-010.bin']
    """
    try:
        first, second = uri_template.format(start), uri_template.format(start + 1)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"the URI template {uri_template!r} needs one positional field such as {{}} or "
                          f"{{:06d}} ({exc})") from None
    if first == second:
        raise ConfigError(f"the URI template {uri_template!r} has no {{}} field: every object would get the same name")
    return (uri_template.format(i) for i in range(start, start + num))


def put_template(
    uri_template: str,
    num: int,
    size: int,
    *,
    dedup: float = 1,
    compress: float = 1,
    start: int = 0,
    seed: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    store: Store | None = None,
    max_in_flight: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Write ``num`` generated objects of ``size`` bytes named by ``uri_template``; return their URIs.

    ``"s3://bucket/obj-{}.bin"`` with ``start=0`` writes ``obj-0.bin`` ... ``obj-{num-1}.bin``
    (``{:06d}`` pads). Object ``i`` is stream ``i`` of one :class:`DataGenerator`: with a
    ``seed`` the content is reproducible (``DataGenerator(dedup, compress, seed).fork(i)``),
    without one every run writes new data. Each of ``max_in_flight`` threads
    (``DatagenOptions.max_in_flight``) reuses one buffer; objects larger than ``chunk_size``
    (``DatagenOptions.chunk_size``) are streamed through :meth:`Store.open_writer` in pieces
    of that size (dedup then applies per piece).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> [u.rsplit("/", 1)[1] for u in put_template(f"file://{d}/o-{{}}.bin", 3, 100, start=1)]
    ['o-1.bin', 'o-2.bin', 'o-3.bin']
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ConfigError(f"num must be an integer >= 0 (got {num=})")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"size must be an integer >= 0 (got {size=})")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be an integer >= 0 (got {start=})")
    uris = list(expand_template(uri_template, num, start))
    overrides: dict[str, Any] = {}
    if max_in_flight is not None:
        overrides["max_in_flight"] = max_in_flight
    if chunk_size is not None:
        overrides["chunk_size"] = chunk_size
    opts = DatagenOptions.from_env(**overrides)
    base = DataGenerator(dedup, compress, seed)
    store = store if store is not None else Store.from_uri(uris[0] if uris else uri_template, storage_options)
    local = threading.local()
    piece = min(size, opts.chunk_size)

    def write_one(i: int) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(piece)
        gen = base.fork(start + i)  # content follows the object's number
        uri = uris[i]
        if size <= piece:
            gen.fill(buf)
            store.put(uri, buf)
            return size
        view = memoryview(buf)
        with store.open_writer(uri) as writer:
            left = size
            while left:
                n = min(left, piece)
                gen.fill(view[:n])
                writer.write(view[:n])
                left -= n
        return size

    if num:
        with _progress_bar(progress, num, "put") as bar:
            _parallel(write_one, range(num), min(opts.max_in_flight, num), lambda _n: bar.update(1))
    return uris


# ---------------------------------------------------------------------- CLI hook


def add_gen_arguments(parser: Any) -> None:
    """Arguments of ``s3dlio-loader gen`` on an argparse (sub)parser (see :func:`run_gen`)."""
    parser.add_argument(
        "target", metavar="URI",
        help="a prefix for a dataset (--format), or an object template with a {} field "
             "('s3://b/obj-{}.bin', '{:06d}' pads) for --size objects of generated bytes",
    )
    parser.add_argument("--format", choices=sorted(EXTENSIONS), default=None,
                        help="dataset format (required unless URI is a template)")
    parser.add_argument("-n", "--objects", type=int, default=1, metavar="N", help="objects to write (default: 1)")
    parser.add_argument("--samples", type=int, default=1, metavar="N",
                        help="dataset: samples per object (default: 1)")
    parser.add_argument("--shape", default=None, metavar="D[,D...]",
                        help="dataset: shape of one sample's data, e.g. 224,224,3 (default: 1024)")
    parser.add_argument("--dtype", default="uint8", help="dataset: numpy dtype of the data (default: uint8)")
    parser.add_argument("--record-size", type=_size, default=None, metavar="BYTES",
                        help="dataset: bytes per sample (instead of --shape/--dtype)")
    parser.add_argument("--classes", type=int, default=10, help="dataset: number of label values (default: 10)")
    parser.add_argument("--row-group-size", type=int, default=None, metavar="ROWS",
                        help="parquet: rows per row group")
    parser.add_argument("--parquet-schema", choices=PARQUET_SCHEMAS, default="binary",
                        help="parquet: layout of the sample data (default: binary)")
    parser.add_argument("--size", type=_size, default=None, metavar="BYTES",
                        help="template: bytes per object (4096, 1MiB...)")
    parser.add_argument("--start", type=int, default=0, help="template: first object number (default: 0)")
    parser.add_argument("--dedup", type=float, default=1, help="dedup ratio at 4 KiB-block level (default: 1)")
    parser.add_argument("--compress", type=float, default=1, help="zstd compression ratio (default: 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the content (default: 0 for datasets, fresh random for templates)")
    parser.add_argument("--workers", type=int, default=None,
                        help="concurrent writers (default: S3DLIO_DATAGEN_WORKERS / S3DLIO_DATAGEN_MAX_IN_FLIGHT)")


def run_gen(args: Any, store: Store, *, progress: bool | None = None, out: Any = None) -> int:
    """Run ``s3dlio-loader gen`` with the parsed ``args`` (from :func:`add_gen_arguments`) on ``store``.

    Prints one summary line to ``out`` (default stdout); returns the exit code (0).
    """
    import time

    out = out if out is not None else sys.stdout
    t0 = time.perf_counter()
    is_template = "{" in args.target and "}" in args.target
    if is_template:
        if args.size is None:
            raise ConfigError("gen with an object template needs --size BYTES")
        if args.format is not None:
            raise ConfigError("--format makes a dataset under a prefix; a {} template writes raw objects (--size)")
        uris = put_template(args.target, args.objects, args.size, dedup=args.dedup, compress=args.compress,
                            start=args.start, seed=args.seed, store=store, max_in_flight=args.workers,
                            progress=progress)
        nbytes = args.size * len(uris)
    else:
        if args.format is None:
            raise ConfigError("gen URI_PREFIX needs --format (parquet, npy, npz, tfrecord, hdf5, raw); "
                              "or give an object template with {} and --size")
        if args.size is not None:
            raise ConfigError("--size is for object templates; a dataset takes --shape/--dtype or --record-size")
        shape = None if args.shape is None else tuple(int(d) for d in str(args.shape).replace("x", ",").split(","))
        uris = generate_dataset(
            args.target, args.format, args.objects, args.samples, sample_shape=shape, dtype=args.dtype,
            record_size=args.record_size, num_classes=args.classes, seed=0 if args.seed is None else args.seed,
            dedup=args.dedup, compress=args.compress, row_group_size=args.row_group_size,
            parquet_schema=args.parquet_schema, store=store, workers=args.workers, progress=progress,
        )
        nbytes = sum(_sizes_or_zero(store, uris))
    seconds = time.perf_counter() - t0
    rate = f", {nbytes / seconds / 1e6:.1f} MB/s" if nbytes and seconds > 0 else ""
    print(f"wrote {len(uris)} object(s), {nbytes} bytes in {seconds:.2f} s{rate}", file=out)
    return 0


def _sizes_or_zero(store: Store, uris: list[str]) -> Iterator[int]:
    """Sizes of the written objects from one listing of their common prefix."""
    if not uris:
        return iter(())
    prefix = uris[0].rsplit("/", 1)[0] + "/"
    wanted = set(uris)
    return (o.size for o in store.list(prefix, recursive=False) if o.uri in wanted)


def _size(text: str) -> int:
    from .options import _parse_size

    try:
        value = _parse_size(text)
    except ValueError:
        raise ConfigError(f"not a size: {text!r} (use 4096, 64k, 1MiB, 1.5g...)") from None
    if value < 0:
        raise ConfigError(f"a size must be >= 0 (got {text!r})")
    return value


__all__ = [
    "BLOCK_SIZE",
    "EXTENSIONS",
    "PARQUET_SCHEMAS",
    "POOL_BLOCKS",
    "DataGenerator",
    "DatasetSpec",
    "add_gen_arguments",
    "expand_template",
    "generate_data",
    "generate_dataset",
    "put_template",
    "run_gen",
]
