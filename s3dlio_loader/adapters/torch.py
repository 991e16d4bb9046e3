"""PyTorch: ``DataLoader(S3IterableDataset(...))`` and ``S3MapDataset`` over any storage.

Both datasets sit on an engine :class:`~s3dlio_loader.Dataset` (the objects, their sample
counts, coalesced concurrent reads) and, for the iterable one, the engine's pure sampling
plan (:mod:`s3dlio_loader.engine.plan`). Nothing here does I/O of its own.

**Iterable, sample mode** (default, ``batch_size=None``): the dataset yields samples and
the DataLoader batches them::

    ds = S3IterableDataset.from_prefix("s3://bucket/train/", format="npz", rows=True,
                                       shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=64, num_workers=4, collate_fn=s3dlio_collate)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...

Sharding is automatic. The rank comes from ``torch.distributed`` when it is initialized
(else ``RANK``/``WORLD_SIZE``, else 0 of 1); rank ``r`` of ``W`` takes the plan positions
``r, r + W, ...`` (padded by default when ``W > 1`` so every rank yields the same count),
and DataLoader worker ``w`` of ``K`` takes that rank's samples ``w, w + K, ...``. That is
sample-level sharding over ``W * K`` shards (shard ``w * W + r``), numbered so that a rank's
samples do not depend on its number of workers. Each worker reads ahead: ``read_size``
samples per :meth:`Dataset.read_samples` call (samples of one object in coalesced requests,
objects concurrently), ``prefetch`` such calls in flight on threads.

**Iterable, batch mode** (``batch_size=B``): the dataset yields whole batches, collated in
the worker straight into shared memory (one copy), to be used with
``DataLoader(ds, batch_size=None, num_workers=K)``. Worker ``w`` makes the rank's batches
``w, w + K, ...`` and the DataLoader takes them round-robin, so the batches arrive in plan
order whatever ``K``: the same order as :class:`~s3dlio_loader.Loader`, ``len(loader)`` is
exact, and any position resumes with any number of workers or ranks. The fast path.

**Engine workers** (batch mode, ``engine_workers=K`` with ``DataLoader(ds, batch_size=None,
num_workers=0)``): the batches are made by the engine's own worker processes
(:class:`~s3dlio_loader.Loader`) into shared-memory slots reused from batch to batch, and
arrive as tensors over those slots. A DataLoader worker instead sends each batch in a new
shared-memory block, whose first touch costs page faults (about 1 ms per MiB measured here).

**Epochs**: ``set_epoch(e)`` re-seeds the shuffle, as with ``DistributedSampler``; without
it every iteration repeats the same order. The epoch lives in shared memory, so persistent
workers (``persistent_workers=True``), which keep the copy of the dataset made when they
started, see it too.

**Tensors**: numeric numpy arrays become tensors with ``torch.from_numpy`` (no copy) when
they are writable; the readers hand out read-only views of the bytes they fetched, which are
copied once (torch does not support read-only tensors). :func:`s3dlio_collate` stacks
numpy samples directly into the batch tensor (in shared memory inside a worker): give the
datasets ``to_tensor=False`` with it and each sample is copied exactly once.

**Resuming**: ``state_dict()`` / ``load_state_dict()`` hold a few integers (the plan
position). Iterating in this process (``num_workers=0``), ``state_dict()`` knows the
position. With DataLoader workers the dataset object here does not see their progress:
call ``ds.state_dict(batches=n, loader=loader)`` with the number of batches the training
loop has taken from ``loader`` this epoch; the plan is deterministic, so that gives the exact
position. In a worker, ``state_dict()`` / ``load_state_dict()`` are the worker's own, which
is the protocol of torchdata's ``StatefulDataLoader`` (it collects and redistributes them).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing import sharedctypes
from typing import Any, Literal, cast

import numpy as np

from ..errors import ConfigError, MissingDependencyError

try:
    import torch
    from torch.utils.data import Dataset as _TorchDataset
    from torch.utils.data import IterableDataset as _TorchIterableDataset
    from torch.utils.data import get_worker_info
except ImportError as _exc:  # pragma: no cover - torch is installed where the tests run
    raise MissingDependencyError(
        "s3dlio_loader.adapters.torch needs PyTorch: pip install 's3dlio-loader[torch]'"
    ) from _exc

from ..engine.dataset import Dataset, Source
from ..engine.loader import Loader, LoaderOptions
from ..engine.plan import EpochOrder, ShardPlan, ShuffleMode, normalize_shuffle, resume_start
from ..engine.prefetch import prefetch_ordered
from ..formats import OnError
from ..storage import Store
from ..storage.store import LocalFiles

#: Most samples per ``Dataset.read_samples`` call in sample mode (``read_size=None``).
DEFAULT_READ_SIZE = 32
#: ``read_size=None`` reads about this many stored bytes per call: samples as large as a
#: Parquet row group are then read one at a time (measured: 32 row groups of 8 MiB per call,
#: 256 MiB in flight, ran at 0.6x the speed of one per call), small ones 32 at a time.
READ_BYTES_TARGET = 8 << 20
#: Reads (sample mode) or batches (batch mode) in flight per process.
DEFAULT_PREFETCH = 2
_STATE_KIND = "s3dlio_loader.torch"
_NUMERIC_KINDS = frozenset("biufc")

Mode = Literal["samples", "batches"]


# ============================================================================ tensors


def to_tensor(sample: Any) -> Any:
    """``sample`` with every numeric numpy array (and numpy scalar) replaced by a tensor.

    Writable arrays are shared (``torch.from_numpy``); read-only ones, such as the views
    the format readers return, are copied once. Dicts, tuples (named too) and lists are
    converted element-wise; bytes, strings, string/object arrays, pyarrow tables and
    anything else are returned unchanged.

    >>> to_tensor({"x": np.arange(3), "name": "a"})
    {'x': tensor([0, 1, 2]), 'name': 'a'}
    """
    if isinstance(sample, np.ndarray):
        return _array_to_tensor(sample)
    if isinstance(sample, np.generic):
        return _array_to_tensor(np.array(sample)) if sample.dtype.kind in _NUMERIC_KINDS else sample
    if isinstance(sample, torch.Tensor | str | bytes):
        return sample
    if isinstance(sample, Mapping):
        return {k: to_tensor(v) for k, v in sample.items()}
    if isinstance(sample, tuple):
        converted = [to_tensor(v) for v in sample]
        return type(sample)(*converted) if hasattr(sample, "_fields") else tuple(converted)
    if isinstance(sample, list):
        return [to_tensor(v) for v in sample]
    return sample


def _array_to_tensor(arr: np.ndarray) -> Any:
    if arr.dtype.kind not in _NUMERIC_KINDS:
        return arr
    try:
        dtype = _torch_dtype(arr.dtype)
    except TypeError:  # a dtype torch has no equivalent for (float128...)
        return arr
    if arr.flags.writeable and arr.dtype.isnative and all(s >= 0 for s in arr.strides):
        return torch.from_numpy(arr)
    # One copy, made where the tensor is going: into shared memory inside a DataLoader worker.
    out = _empty(arr.shape, dtype)
    np.copyto(out.numpy(), arr, casting="equiv")
    return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new contiguous tensor; inside a DataLoader worker, in shared memory (it then reaches the
    consumer without the copy torch makes to share a private tensor)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape, _contiguous_strides(shape))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {}


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    found = _TORCH_DTYPES.get(dtype)
    if found is None:
        found = _TORCH_DTYPES[dtype] = torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype
    return found


class S3Collate:
    """A ``collate_fn`` for samples of any format: arrays, dicts of arrays, bytes, numbers.

    * numeric numpy arrays (read-only ones too) and tensors of one shape and dtype are
      stacked into one tensor with a leading batch axis, with a single copy; inside a
      DataLoader worker the batch tensor is allocated in shared memory, so it reaches the
      training process without another copy;
    * arrays of different shapes become a list of tensors;
    * dicts are collated per key, tuples and lists of equal length per position;
    * Python and numpy numbers become a 1-D tensor;
    * bytes-like samples become a list of ``bytes`` (``bytes_as="bytes"``, default, as
      torch's ``default_collate``), or a list of 1-D ``uint8`` tensors that are views into
      one buffer, in shared memory inside a worker (``bytes_as="tensor"``: a batch of large
      raw objects then leaves a worker without being pickled through a pipe);
    * anything else (strings, pyarrow tables, ``None``...) stays a list.

    >>> batch = s3dlio_collate([{"x": np.ones(2, np.float32), "y": 1}, {"x": np.zeros(2, np.float32), "y": 2}])
    >>> batch["x"].shape, batch["y"].tolist()
    (torch.Size([2, 2]), [1, 2])
    """

    def __init__(self, *, bytes_as: Literal["bytes", "tensor"] = "bytes") -> None:
        if bytes_as not in ("bytes", "tensor"):
            raise ConfigError(f"bytes_as must be 'bytes' or 'tensor' (got bytes_as={bytes_as!r})")
        self.bytes_as = bytes_as

    def __call__(self, samples: Sequence[Any]) -> Any:
        return self._collate(list(samples))

    def _collate(self, samples: list[Any]) -> Any:
        if not samples:
            return []
        first = samples[0]
        if isinstance(first, torch.Tensor):
            return self._tensors(samples)
        if isinstance(first, np.ndarray):
            return self._arrays(samples)
        if isinstance(first, Mapping):
            keys = first.keys()
            try:
                same = all(s.keys() == keys for s in samples)
            except AttributeError:  # not all mappings
                same = False
            if same:
                return {k: self._collate([s[k] for s in samples]) for k in keys}
            return [to_tensor(s) for s in samples]
        if isinstance(first, tuple | list) and not isinstance(first, str):
            if all(type(s) is type(first) and len(s) == len(first) for s in samples):
                parts = [self._collate([s[i] for s in samples]) for i in range(len(first))]
                if isinstance(first, list):
                    return parts
                return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)
            return [to_tensor(s) for s in samples]
        if isinstance(first, bool | int | float | np.number | np.bool_) and all(
            isinstance(s, bool | int | float | np.number | np.bool_) for s in samples
        ):
            return _array_to_tensor(np.asarray(samples))
        if isinstance(first, bytes | bytearray | memoryview) and all(
            isinstance(s, bytes | bytearray | memoryview) for s in samples
        ):
            return self._bytes(samples)
        return list(samples)

    def _tensors(self, samples: list[Any]) -> Any:
        first = samples[0]
        if all(isinstance(s, torch.Tensor) and s.shape == first.shape and s.dtype == first.dtype
               and s.device == first.device and s.layout == torch.strided for s in samples):  # fmt: skip
            out = _empty((len(samples), *first.shape), first.dtype) if first.device.type == "cpu" else None
            return torch.stack(samples, 0, out=out)
        return list(samples)

    def _arrays(self, samples: list[Any]) -> Any:
        first = samples[0]
        if first.dtype.kind not in _NUMERIC_KINDS:
            return list(samples)
        try:
            dtype = _torch_dtype(first.dtype)
        except TypeError:
            return list(samples)
        out = _empty((len(samples), *first.shape), dtype)
        try:
            # numpy checks that every sample has the first one's shape, and (casting="equiv")
            # its dtype, byte order aside: one pass in C instead of one check per sample here.
            np.stack(samples, out=out.numpy(), casting="equiv")
        except (ValueError, TypeError):  # ragged, or mixed dtypes
            return [to_tensor(s) for s in samples]
        return out

    def _bytes(self, samples: list[Any]) -> Any:
        if self.bytes_as == "bytes":
            return [bytes(s) if isinstance(s, memoryview | bytearray) else s for s in samples]
        views = [memoryview(s).cast("B") for s in samples]
        out = _empty((sum(v.nbytes for v in views),), torch.uint8)
        flat = out.numpy()
        parts, offset = [], 0
        for v in views:
            flat[offset : offset + v.nbytes] = np.frombuffer(v, dtype=np.uint8)
            parts.append(out[offset : offset + v.nbytes])
            offset += v.nbytes
        return parts

    def collate_files(self, files: LocalFiles) -> list[Any]:
        """What ``self(samples)`` makes of the raw objects ``files`` (``bytes_as="tensor"``), read
        straight into the batch's tensor: no intermediate ``bytes``, one copy from the page cache."""
        out = _empty((files.nbytes,), torch.uint8)
        flat = out.numpy()
        parts, views, offset = [], [], 0
        for n in files.sizes:
            views.append(flat[offset : offset + n])
            parts.append(out[offset : offset + n])
            offset += n
        files.read_into(views)
        return parts

    def __repr__(self) -> str:
        return f"S3Collate(bytes_as={self.bytes_as!r})"


#: The default :class:`S3Collate`: ``DataLoader(ds, batch_size=64, collate_fn=s3dlio_collate)``.
s3dlio_collate = S3Collate()


# ============================================================================ rank, epoch


def distributed_rank() -> tuple[int, int] | None:
    """(rank, world size) of the default ``torch.distributed`` process group, or None if there is none."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return None


def _env_rank() -> tuple[int, int] | None:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return None
    try:
        return int(rank or 0), int(world or 1)
    except ValueError:
        raise ConfigError(f"RANK={rank!r} and WORLD_SIZE={world!r} must be integers") from None


class _Shared:
    """Values every copy of one dataset sees, DataLoader workers included: the epoch, how many
    times a state was loaded, and the last epoch iterated in a worker (plus one).

    The values live in a shared-memory array: inherited by forked workers, passed to spawned
    ones with the process (a file descriptor). Any other pickling (``copy.deepcopy``, sending
    the dataset elsewhere) gives an independent copy of the current values.
    """

    _EPOCH, _GENERATION, _WORKER_EPOCH = 0, 1, 2

    def __init__(self, epoch: int = 0) -> None:
        self._values = sharedctypes.RawArray("q", 3)
        self._values[self._EPOCH] = epoch

    @property
    def epoch(self) -> int:
        return int(self._values[self._EPOCH])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._values[self._EPOCH] = value

    @property
    def generation(self) -> int:
        return int(self._values[self._GENERATION])

    def bump_generation(self) -> int:
        self._values[self._GENERATION] += 1
        return self.generation

    @property
    def worker_epoch(self) -> int | None:
        value = int(self._values[self._WORKER_EPOCH])
        return value - 1 if value else None

    @worker_epoch.setter
    def worker_epoch(self, value: int) -> None:
        self._values[self._WORKER_EPOCH] = value + 1

    def __getstate__(self) -> dict[str, Any]:
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"values": self._values}  # a process being started: share the memory itself
        return {"copy": list(self._values)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "values" in state:
            self._values = state["values"]
        else:
            self._values = sharedctypes.RawArray("q", 3)
            self._values[:] = state["copy"]


# ============================================================================ datasets


class _S3Base:
    """What both datasets share: the engine Dataset, the transform, tensor conversion."""

    dataset: Dataset
    transform: Callable[[Any], Any] | None
    to_tensor: bool

    def _setup(
        self,
        source: Source | Dataset,
        format: str | None,
        *,
        transform: Callable[[Any], Any] | None,
        to_tensor: bool,
        storage_options: Mapping[str, Any] | None,
        store: Store | None,
        pattern: str | None,
        regex: str | None,
        on_error: OnError,
        io_threads: int,
        format_options: dict[str, Any],
    ) -> None:
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable (got {type(transform).__name__})")
        if isinstance(source, Dataset):
            if format_options or format not in (None, source.format):
                raise ConfigError("format and format options belong to the Dataset given as source; set them there")
            self.dataset = source
        else:
            self.dataset = Dataset(source, format, storage_options=storage_options, store=store, pattern=pattern,
                                   regex=regex, on_error=on_error, io_threads=io_threads, **format_options)  # fmt: skip
        self.transform = transform
        self.to_tensor = to_tensor

    def _prepare(self, samples: list[Any]) -> list[Any]:
        if self.transform is not None:
            samples = [self.transform(s) for s in samples]
        if self.to_tensor:
            samples = [to_tensor(s) for s in samples]
        return samples

    @property
    def format(self) -> str:
        """The format of the objects (``"npz"``, ``"parquet"``...)."""
        return self.dataset.format

    @property
    def num_samples(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return len(self.dataset)


class S3IterableDataset(_S3Base, _TorchIterableDataset):
    """An iterable dataset over objects in storage, sharded over ranks and DataLoader workers.

    Args:
        source: a URI prefix (``s3://bucket/train/``), a glob, a list of URIs, a
            :class:`~s3dlio_loader.Manifest`, or an engine :class:`~s3dlio_loader.Dataset`.
        format: ``"parquet"``, ``"npy"``, ``"npz"``, ``"tfrecord"``, ``"hdf5"`` or ``"raw"``
            (from the first object's extension when None).
        batch_size: None (default): yield samples and let the DataLoader batch them. An int:
            yield batches of this many samples, collated in the worker by ``collate_fn``; use
            ``DataLoader(ds, batch_size=None)``. See the module documentation.
        shuffle: ``False``/``"none"``, ``True``/``"global"`` or ``"block"`` (objects in a seeded
            order, samples shuffled within windows of ``shuffle_window``: cheap for formats
            that read fast sequentially).
        seed: the shuffle seed; an epoch's order depends only on (seed, epoch).
        transform: applied to each sample (as the reader returns it: numpy arrays, dicts,
            bytes, pyarrow tables...) in the worker, before tensor conversion and collation.
        collate_fn: batch mode only: makes a batch of a list of samples (default
            :data:`s3dlio_collate`).
        to_tensor: convert numpy arrays in samples to tensors (see :func:`to_tensor`).
            Default: True in sample mode, False in batch mode (the collate makes tensors).
        drop_last: shorten every rank to the same number of samples (batch mode: of full
            batches) instead of padding.
        pad: repeat samples so that every rank yields as many as the others; default: when
            there is more than one rank and not ``drop_last``.
        shuffle_window: window of the ``"block"`` shuffle.
        rank, world_size: this process's shard; default: ``torch.distributed`` if initialized,
            else ``RANK``/``WORLD_SIZE`` from the environment, else 0 and 1.
        read_size: sample mode: samples read per request batch inside a worker; default: as
            many as make about 8 MiB of stored data, 1 to 32.
        prefetch: reads (sample mode) or batches (batch mode) in flight ahead of the consumer
            in each worker, on threads; 0 reads in the consumer's thread.
        engine_workers: batch mode, iterated in this process (``DataLoader(ds, batch_size=None,
            num_workers=0)``): make the batches in this many worker processes of the engine's
            own prefetch (:class:`~s3dlio_loader.Loader`), which write them into shared-memory
            slots that are reused from batch to batch; the batches arrive as tensors over those
            slots, without a copy (raw objects as uint8 tensors with
            ``collate_fn=S3Collate(bytes_as="tensor")``; as ``bytes``, copied once, with the
            default collate). 0 (default): no engine workers.
        loader_options: the engine's :class:`~s3dlio_loader.LoaderOptions` with ``engine_workers``
            (memory budget, slots per worker, start method...).
        storage_options, store: backend configuration (see :class:`~s3dlio_loader.Store`).
        pattern, regex: filter a prefix listing.
        on_error: ``"raise"`` or ``"skip"`` samples that fail to decode.
        io_threads: objects of one read fetched concurrently.
        **format_options: for the format's reader (``rows=True``, ``columns=[...]``...).

    >>> import tempfile
    >>> from torch.utils.data import DataLoader
    >>> from s3dlio_loader.formats import write
    >>> root = f"file://{tempfile.mkdtemp()}"
    >>> write(f"{root}/a.npz", {"x": np.arange(8.0).reshape(4, 2), "y": np.arange(4)})
    >>> ds = S3IterableDataset(f"{root}/", rows=True)
    >>> [batch["y"].tolist() for batch in DataLoader(ds, batch_size=3)]
    [[0, 1, 2], [3]]
    >>> ds = S3IterableDataset(f"{root}/", rows=True, batch_size=2, shuffle=True, seed=1)
    >>> [batch["y"].tolist() for batch in DataLoader(ds, batch_size=None)]
    [[0, 2], [1, 3]]
    """

    def __init__(
        self,
        source: Source | Dataset,
        format: str | None = None,
        *,
        batch_size: int | None = None,
        shuffle: ShuffleMode | bool = False,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        to_tensor: bool | None = None,
        drop_last: bool = False,
        pad: bool | None = None,
        shuffle_window: int = 1024,
        rank: int | None = None,
        world_size: int | None = None,
        read_size: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        engine_workers: int = 0,
        loader_options: LoaderOptions | None = None,
        storage_options: Mapping[str, Any] | None = None,
        store: Store | None = None,
        pattern: str | None = None,
        regex: str | None = None,
        on_error: OnError = "raise",
        io_threads: int = 16,
        **format_options: Any,
    ) -> None:
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ConfigError(f"batch_size must be None or >= 1 (got batch_size={batch_size!r})")
        if collate_fn is not None and batch_size is None:
            raise ConfigError("collate_fn applies when the dataset makes batches (batch_size=...); "
                              "in sample mode give collate_fn to the DataLoader")  # fmt: skip
        if read_size is not None and read_size < 1:
            raise ConfigError(f"read_size must be >= 1 (got read_size={read_size})")
        if prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0 (got prefetch={prefetch})")
        if engine_workers < 0 or (engine_workers and batch_size is None):
            raise ConfigError(f"engine_workers needs batch mode (batch_size=...) and must be >= 0 "
                              f"(got engine_workers={engine_workers}, batch_size={batch_size})")  # fmt: skip
        if shuffle_window < 1:
            raise ConfigError(f"shuffle_window must be >= 1 (got shuffle_window={shuffle_window})")
        if (rank is None) != (world_size is None):
            raise ConfigError(f"give both rank and world_size, or neither (got {rank=}, {world_size=})")
        if world_size is not None and rank is not None and not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size (got {rank=}, {world_size=})")
        convert = batch_size is None if to_tensor is None else to_tensor
        self._setup(source, format, transform=transform, to_tensor=convert, storage_options=storage_options,
                    store=store, pattern=pattern, regex=regex, on_error=on_error, io_threads=io_threads,
                    format_options=format_options)  # fmt: skip
        self.batch_size = batch_size
        self.shuffle: ShuffleMode = normalize_shuffle(shuffle)
        self.seed = int(seed)
        self.collate_fn = collate_fn if collate_fn is not None else s3dlio_collate
        self.drop_last = drop_last
        self.pad = pad
        self.shuffle_window = shuffle_window
        self.rank = rank
        self.world_size = world_size
        self.read_size = read_size if read_size is not None else self._auto_read_size()
        self.prefetch = prefetch
        self.engine_workers = engine_workers
        self.loader_options = loader_options
        self._shared = _Shared()
        self._engine_loader: Loader | None = None  # engine_workers: kept from one epoch to the next
        self._generation = 0  # the state generation this copy knows (see _check_copy)
        self._resume: dict[str, Any] | None = None  # a loaded state, for iterations of its epoch
        self._progress: _Progress | None = None  # the latest iteration in this process
        self._captured_rank: tuple[int, int] | None = None  # the parent's rank, for spawned workers

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_prefix(cls, prefix: str, format: str | None = None, **kwargs: Any) -> S3IterableDataset:
        """All objects under ``prefix`` (a URI prefix or glob); ``kwargs`` as for the constructor."""
        return cls(prefix, format, **kwargs)

    @classmethod
    def from_objects(cls, uris: Iterable[str], format: str | None = None, **kwargs: Any) -> S3IterableDataset:
        """The objects ``uris``, in that order; ``kwargs`` as for the constructor."""
        return cls(list(uris), format, **kwargs)

    # ------------------------------------------------------------------ plan

    @property
    def mode(self) -> Mode:
        """``"samples"`` (the dataset yields samples) or ``"batches"`` (it yields batches)."""
        return "samples" if self.batch_size is None else "batches"

    @property
    def epoch(self) -> int:
        """The epoch the next iteration uses."""
        return self._shared.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next iterations, in this process and in every DataLoader worker.

        A state loaded with :meth:`load_state_dict` stays in force while the epoch is its own.
        """
        epoch = int(epoch)
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0 (got epoch={epoch})")
        self._shared.epoch = epoch
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None

    def resolve_rank(self) -> tuple[int, int]:
        """(rank, world size) this process would use now (see the ``rank`` argument)."""
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        found = distributed_rank() or self._captured_rank or _env_rank() or (0, 1)
        rank, world = found
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"need 0 <= rank < world_size (got rank={rank}, world_size={world})")
        return found

    def _plan(self, epoch: int, rank: int, world: int, start: int) -> ShardPlan:
        order = EpochOrder(self.dataset.sizes, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                           shuffle_window=self.shuffle_window)  # fmt: skip
        return ShardPlan(order, rank=rank, world_size=world, batch_size=self.batch_size or 1,
                         drop_last=self.drop_last, pad=self.pad, start=start)  # fmt: skip

    def _origin(self, epoch: int, world: int, workers: int) -> tuple[int, list[int]]:
        """Where iterations of ``epoch`` start: the epoch position consumed by all ranks, and what
        each worker skips after it (samples, or batches in batch mode)."""
        state = self._resume
        if state is None or state["epoch"] != epoch:
            return 0, [0] * workers
        _, start = resume_start(state, n=len(self.dataset), seed=self.seed, shuffle=self.shuffle)
        if state.get("scope") == "worker":
            worker = self._worker_index()
            if (state["num_workers"], state["world_size"]) != (workers, world) or state["worker_id"] != worker:
                raise ConfigError(
                    f"this state belongs to worker {state['worker_id']} of {state['num_workers']} on "
                    f"{state['world_size']} rank(s); it is loaded in worker {worker} of {workers} on {world}"
                )
            skips = [0] * workers
            skips[worker] = int(state["yielded"])
            return start, skips
        extra = state.get("extra")
        if extra is not None:
            if (len(extra), state["world_size"]) != (workers, world):
                raise ConfigError(
                    f"this state was saved mid-round with num_workers={len(extra)} on {state['world_size']} rank(s): "
                    f"resume with the same (now num_workers={workers}, {world} rank(s)), or save after a multiple "
                    f"of num_workers batches, or use batch mode (batch_size=...), whose states fit any number"
                )
            return start, [int(e) for e in extra]
        return start, [0] * workers

    def _auto_read_size(self) -> int:
        sizes = np.asarray(self.dataset.objects.sizes)
        known = sizes[sizes >= 0]
        samples = len(self.dataset)
        if not known.size or not samples:
            return DEFAULT_READ_SIZE
        per_sample = float(known.sum()) / (samples * known.size / sizes.size)
        return max(1, min(DEFAULT_READ_SIZE, int(READ_BYTES_TARGET // max(per_sample, 1.0))))

    @staticmethod
    def _worker_index() -> int:
        info = get_worker_info()
        return 0 if info is None else int(info.id)

    def __len__(self) -> int:
        """Samples (sample mode) or batches (batch mode) this rank yields in the current epoch."""
        rank, world = self.resolve_rank()
        epoch = self.epoch
        start, _ = self._origin(epoch, world, 1) if self._resume_is_prefix() else (0, [0])
        plan = self._plan(epoch, rank, world, start)
        return plan.num_samples if self.batch_size is None else plan.num_batches

    def _resume_is_prefix(self) -> bool:
        state = self._resume
        return state is None or (state.get("scope") != "worker" and state.get("extra") is None)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (int(info.id), int(info.num_workers)) if info is not None else (0, 1)
        self._check_copy(info is not None)
        epoch = self._shared.epoch
        resume = self._resume
        if info is not None and resume is not None and resume.get("scope") == "worker":
            # A worker's own state, given back by torchdata's StatefulDataLoader: it names the epoch.
            epoch = int(resume["epoch"])
        if info is not None:
            self._shared.worker_epoch = epoch
        rank, world = self.resolve_rank()
        start, skips = self._origin(epoch, world, workers)
        if info is not None and resume is not None and resume.get("scope") == "worker":
            self._resume = None  # used: the next epochs of this worker follow set_epoch()
        plan = self._plan(epoch, rank, world, start)
        progress = self._progress = _Progress(epoch, plan, worker, workers, skips)
        if self.batch_size is None:
            items = self._samples(plan, worker, workers, skips[worker])
        elif self.engine_workers:
            if info is not None:
                raise ConfigError("engine_workers starts the engine's own worker processes: use it with "
                                  "DataLoader(num_workers=0), not inside DataLoader workers")  # fmt: skip
            items = self._engine_batches(plan, rank, world, skips[worker])
        else:
            items = self._batches(plan, worker, workers, skips[worker])
        for item in items:
            progress.yielded += 1
            yield item

    def _check_copy(self, in_worker: bool) -> None:
        if in_worker and self._shared.generation != self._generation:
            raise ConfigError(
                "load_state_dict() was called after this DataLoader's persistent workers started, so they "
                "cannot see it: load the state before the first iteration, or create a new DataLoader"
            )

    def _samples(self, plan: ShardPlan, worker: int, workers: int, skip: int) -> Iterator[Any]:
        mine = range(worker, plan.num_samples, workers)[skip:]  # this worker's samples of the rank
        chunks = (mine[i : i + self.read_size] for i in range(0, len(mine), self.read_size))

        def read(chunk: range) -> list[Any]:
            first, last = chunk.start, chunk[-1]
            positions = plan.positions(first, last - first + 1)[:: chunk.step]
            return self._prepare(self.dataset.read_samples(plan.order.samples(positions)))

        for samples in prefetch_ordered(read, chunks, self.prefetch, thread_name_prefix="s3dlio-torch"):
            yield from samples

    def _batches(self, plan: ShardPlan, worker: int, workers: int, skip: int) -> Iterator[Any]:
        mine = range(worker, plan.num_batches, workers)[skip:]
        collate = self.collate_fn
        # Raw local objects collated into one uint8 tensor are read straight into it.
        direct = (isinstance(collate, S3Collate) and collate.bytes_as == "tensor" and self.transform is None
                  and not self.to_tensor and type(self)._prepare is S3IterableDataset._prepare)  # fmt: skip

        def make(batch: int) -> Any:
            ids = plan.batch_samples(batch)
            if direct:
                files = self.dataset.open_local_raw(ids)
                if files is not None:
                    return cast(S3Collate, collate).collate_files(files)
            return collate(self._prepare(self.dataset.read_samples(ids)))

        yield from prefetch_ordered(make, mine, self.prefetch, thread_name_prefix="s3dlio-torch")

    def _engine_batches(self, plan: ShardPlan, rank: int, world: int, skip: int) -> Iterator[Any]:
        own_collate = not isinstance(self.collate_fn, S3Collate)
        # One engine Loader per (rank, world) for this dataset's life: its workers wait between
        # epochs (LoaderOptions.persistent_workers) instead of starting again for each epoch.
        loader = self._engine_loader
        if loader is None or (loader.rank, loader.world_size, loader.batch_size) != (rank, world, plan.batch_size):
            if loader is not None:
                loader.close()
            loader = self._engine_loader = Loader(
                self.dataset, batch_size=plan.batch_size, shuffle=self.shuffle, seed=self.seed,
                num_workers=self.engine_workers, rank=rank, world_size=world, drop_last=self.drop_last, pad=self.pad,
                transform=self.transform, collate=self.collate_fn if own_collate else None,
                shuffle_window=self.shuffle_window, options=self.loader_options,
            )  # fmt: skip
        loader.load_state_dict(plan.state(skip))  # this epoch, from this iteration's start
        as_tensors = isinstance(self.collate_fn, S3Collate) and self.collate_fn.bytes_as == "tensor"
        finished = False
        try:
            for batch in loader:
                yield batch if own_collate else _shared_to_tensor(batch, as_tensors)
            finished = True
        finally:
            if not finished:
                loader.close()

    def close(self) -> None:
        """Stop the engine workers kept between epochs (``engine_workers``); idempotent. The
        dataset can still be iterated: new workers start then."""
        loader, self._engine_loader = self._engine_loader, None
        if loader is not None:
            loader.close()

    # ------------------------------------------------------------------ state

    def state_dict(self, batches: int | None = None, *, loader: Any = None) -> dict[str, Any]:
        """The position in the current epoch: a small dict of integers. Save it with the model.

        Args:
            batches: batches the training loop has taken from ``loader`` in this epoch. Needed
                when the DataLoader has worker processes (their progress is not visible here).
                Without it: the position of the last iteration in this process.
            loader: the ``torch.utils.data.DataLoader`` (any object with ``batch_size``,
                ``num_workers`` and ``drop_last``) iterating this dataset; needed with
                ``batches`` in sample mode, where the position depends on how it batches.

        Inside a DataLoader worker, the worker's own position (torchdata ``StatefulDataLoader``).

        Raises:
            ConfigError: without ``batches``, in the main process, when only DataLoader
                workers iterated this epoch; ``batches`` in sample mode without ``loader``.
        """
        info = get_worker_info()
        rank, world = self.resolve_rank()
        epoch = self.epoch
        if info is not None:
            return self._worker_state(epoch, rank, world, int(info.id), int(info.num_workers))
        if batches is None:
            progress = self._progress
            if progress is None or progress.epoch != epoch:
                if self._shared.worker_epoch == epoch:
                    raise ConfigError(
                        "this epoch was iterated by DataLoader worker processes, whose progress is not visible "
                        "here: call state_dict(batches=<batches taken this epoch>, loader=<the DataLoader>)"
                    )
                if self._resume is not None and self._resume["epoch"] == epoch:
                    return dict(self._resume)
                return self._rank_state(self._plan(epoch, rank, world, 0), [0])
            # This process iterated: one "worker" that yielded samples (or batches) one by one.
            return self._rank_state(progress.plan, [progress.skips[0] + progress.yielded])
        if batches < 0:
            raise ConfigError(f"batches must be >= 0 (got batches={batches})")
        if self.batch_size is not None:  # batch i of the DataLoader is batch i of the plan
            start, skips = self._origin(epoch, world, 1)
            return self._rank_state(self._plan(epoch, rank, world, start), [skips[0] + batches])
        start, skips = self._origin(epoch, world, _workers_of(loader))
        plan = self._plan(epoch, rank, world, start)
        if loader is None:
            raise ConfigError("in sample mode, state_dict(batches=...) also needs loader=<the DataLoader>, whose "
                              "batch_size, num_workers and drop_last decide which samples were taken")  # fmt: skip
        return self._rank_state(plan, _taken_per_worker(plan.num_samples, skips, batches, loader))

    def _rank_state(self, plan: ShardPlan, consumed: list[int]) -> dict[str, Any]:
        """The state after each of ``len(consumed)`` workers consumed that many of its samples
        (batch mode: one "worker", consumed in batches)."""
        state: dict[str, Any] = {"kind": _STATE_KIND, "mode": self.mode, "scope": "rank"}
        if self.batch_size is not None:
            return {**state, **plan.state(consumed[0])}
        k, n = len(consumed), plan.num_samples
        # Rank samples [0, prefix) were all taken; prefix is a multiple of k (or the end), so that
        # worker w keeps samples w, w + k, ... of what remains, and skips its extra ones.
        finished = all(c >= len(range(w, n, k)) for w, c in enumerate(consumed))
        prefix = n if finished else min(n, k * min(consumed))
        extra = [c - len(range(w, prefix, k)) for w, c in enumerate(consumed)]
        state.update(plan.state(prefix))
        if any(extra):
            state.update(num_workers=k, extra=extra)
        return state

    def _worker_state(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> dict[str, Any]:
        progress = self._progress
        if progress is None or progress.epoch != epoch:
            start, skips = self._origin(epoch, world, workers)
            plan, yielded = self._plan(epoch, rank, world, start), skips[worker]
        else:
            plan, yielded = progress.plan, progress.skips[worker] + progress.yielded
        return {"kind": _STATE_KIND, "mode": self.mode, "scope": "worker", **plan.state(0),
                "worker_id": worker, "num_workers": workers, "yielded": yielded}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a position saved by :meth:`state_dict`: the next iterations of its epoch yield
        exactly what was not consumed (its epoch becomes the current one).

        A rank-level state (saved in the main process) resumes with any number of workers, and
        with any number of ranks if it was saved on all ranks at the same step; in sample mode, a
        state saved mid-round (after a number of batches that is not a multiple of
        ``num_workers``) needs the same number of workers and ranks.

        Raises:
            ConfigError: the state is for another dataset size, seed, shuffle or mode.
        """
        state = dict(state)
        if state.get("kind", _STATE_KIND) != _STATE_KIND or state.get("mode", self.mode) != self.mode:
            raise ConfigError(f"not a state of a {self.mode}-mode S3IterableDataset: kind={state.get('kind')!r}, "
                              f"mode={state.get('mode')!r}")  # fmt: skip
        resume_start(state, n=len(self.dataset), seed=self.seed, shuffle=self.shuffle)  # validates
        if (state.get("scope") == "worker" and self.batch_size is not None
                and state.get("batch_size") != self.batch_size):  # fmt: skip
            raise ConfigError(f"this worker state counts batches of {state.get('batch_size')}, not {self.batch_size}")
        self._resume = state
        self._progress = None
        if get_worker_info() is None:
            self._shared.epoch = int(state["epoch"])
            self._generation = self._shared.bump_generation()

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_progress"] = None
        state["_engine_loader"] = None
        if self.rank is None:
            # A spawned worker has no process group of its own: it uses its parent's rank.
            state["_captured_rank"] = distributed_rank() or self._captured_rank
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset!r}, mode={self.mode!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle!r}, seed={self.seed}, epoch={self.epoch})")  # fmt: skip


def _shared_to_tensor(batch: Any, bytes_as_tensors: bool) -> Any:
    """An engine batch (numpy arrays and memoryviews over a writable shared-memory slot) as
    tensors over the same memory."""
    if isinstance(batch, np.ndarray):
        return _array_to_tensor(batch)
    if isinstance(batch, memoryview):
        if bytes_as_tensors and batch.nbytes:
            return torch.frombuffer(batch, dtype=torch.uint8)
        # bytes, as S3Collate(bytes_as="bytes") promises: torch's default_convert (DataLoader with
        # batch_size=None) would turn a memoryview into a list of ints.
        return bytes(batch)
    if isinstance(batch, dict):
        return {k: _shared_to_tensor(v, bytes_as_tensors) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_shared_to_tensor(v, bytes_as_tensors) for v in batch]
    if isinstance(batch, tuple):
        return tuple(_shared_to_tensor(v, bytes_as_tensors) for v in batch)
    return to_tensor(batch)


class _Progress:
    """One iteration in this process: its epoch, plan, worker slot and how far it went."""

    __slots__ = ("epoch", "plan", "skips", "worker", "workers", "yielded")

    def __init__(self, epoch: int, plan: ShardPlan, worker: int, workers: int, skips: list[int]) -> None:
        self.epoch, self.plan, self.worker, self.workers, self.skips = epoch, plan, worker, workers, skips
        self.yielded = 0


def _workers_of(loader: Any) -> int:
    return max(1, int(getattr(loader, "num_workers", 0) or 0)) if loader is not None else 1


def _taken_per_worker(n: int, skips: list[int], batches: int, loader: Any) -> list[int]:
    """Samples of each worker in the first ``batches`` batches of a DataLoader over a sample-mode dataset.

    Worker ``w`` of ``K`` yields the rank's samples ``w, w + K, ...`` (after ``skips[w]``);
    the DataLoader batches each worker's samples separately and, in order, takes one batch
    from each worker still running, in worker order, round after round.
    """
    k = _workers_of(loader)
    if len(skips) != k:
        raise ConfigError(f"the loaded state has {len(skips)} worker positions; the DataLoader has {k} workers")
    size = getattr(loader, "batch_size", None) or 1
    drop = bool(getattr(loader, "drop_last", False))
    left = [len(range(w, n, k)) - skips[w] for w in range(k)]
    per_worker = [r // size if drop else -(-r // size) for r in left]
    rounds = min(min(per_worker), batches // k)
    taken = [rounds] * k
    remaining = batches - rounds * k
    j = rounds
    while remaining > 0 and any(p > j for p in per_worker):
        for w in range(k):
            if remaining and per_worker[w] > j:
                taken[w] += 1
                remaining -= 1
        j += 1
    return [skips[w] + min(taken[w] * size, left[w]) for w in range(k)]


class S3MapDataset(_S3Base, _TorchDataset):
    """A map-style dataset: sample ``i`` of the objects, read on demand.

    Use it with any sampler (``DataLoader(ds, shuffle=True)``, ``DistributedSampler``...);
    a DataLoader with automatic batching fetches each batch with one :meth:`__getitems__`
    call, which reads the samples of one object with coalesced requests and different objects
    concurrently. Arguments as for :class:`S3IterableDataset` (``to_tensor`` defaults to True;
    shuffling and sharding are the sampler's).

    >>> import tempfile
    >>> from s3dlio_loader.formats import write
    >>> root = f"file://{tempfile.mkdtemp()}"
    >>> write(f"{root}/a.npz", {"x": np.arange(8.0).reshape(4, 2), "y": np.arange(4)})
    >>> ds = S3MapDataset(f"{root}/", rows=True)
    >>> len(ds), ds[2]["x"].tolist(), [s["y"].item() for s in ds.__getitems__([3, 0])]
    (4, [4.0, 5.0], [3, 0])
    """

    def __init__(
        self,
        source: Source | Dataset,
        format: str | None = None,
        *,
        transform: Callable[[Any], Any] | None = None,
        to_tensor: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        store: Store | None = None,
        pattern: str | None = None,
        regex: str | None = None,
        on_error: OnError = "raise",
        io_threads: int = 16,
        **format_options: Any,
    ) -> None:
        if on_error != "raise":
            raise ConfigError("S3MapDataset needs on_error='raise': a skipped sample would leave a hole at its index")
        self._setup(source, format, transform=transform, to_tensor=to_tensor, storage_options=storage_options,
                    store=store, pattern=pattern, regex=regex, on_error=on_error, io_threads=io_threads,
                    format_options=format_options)  # fmt: skip

    @classmethod
    def from_prefix(cls, prefix: str, format: str | None = None, **kwargs: Any) -> S3MapDataset:
        """All objects under ``prefix`` (a URI prefix or glob); ``kwargs`` as for the constructor."""
        return cls(prefix, format, **kwargs)

    @classmethod
    def from_objects(cls, uris: Iterable[str], format: str | None = None, **kwargs: Any) -> S3MapDataset:
        """The objects ``uris``, in that order; ``kwargs`` as for the constructor."""
        return cls(list(uris), format, **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices`` (negative ones count from the end), read together."""
        n = len(self.dataset)
        ids = np.asarray([int(i) for i in indices], dtype=np.int64)
        bad = ids[(ids < -n) | (ids >= n)]
        if bad.size:
            raise IndexError(f"index {int(bad[0])} out of range for a dataset of {n} samples")
        ids = np.where(ids < 0, ids + n, ids)
        return self._prepare(self.dataset.read_samples(ids))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"


# ============================================================================ s3dlio names


class ObjectStoreIterableDataset(S3IterableDataset):
    """s3dlio's name: an :class:`S3IterableDataset` of raw objects by default, each a 1-D uint8 tensor.

    Args:
        return_type: ``"tensor"`` (default, as s3dlio: a writable uint8 tensor, one copy) or
            ``"bytes"``; applies to raw objects (``format="raw"``).
        Everything else as for :class:`S3IterableDataset` (``format`` defaults to ``"raw"``).
    """

    def __init__(self, source: Source | Dataset, format: str | None = "raw", *,
                 return_type: Literal["tensor", "bytes"] = "tensor", **kwargs: Any) -> None:  # fmt: skip
        self.return_type = _check_return_type(return_type)
        super().__init__(source, None if isinstance(source, Dataset) else format or "raw", **kwargs)

    def _prepare(self, samples: list[Any]) -> list[Any]:
        return super()._prepare(_raw_as(self.return_type, samples))


class ObjectStoreMapDataset(S3MapDataset):
    """s3dlio's name: an :class:`S3MapDataset` of raw objects by default (see :class:`ObjectStoreIterableDataset`)."""

    def __init__(self, source: Source | Dataset, format: str | None = "raw", *,
                 return_type: Literal["tensor", "bytes"] = "tensor", **kwargs: Any) -> None:  # fmt: skip
        self.return_type = _check_return_type(return_type)
        super().__init__(source, None if isinstance(source, Dataset) else format or "raw", **kwargs)

    def _prepare(self, samples: list[Any]) -> list[Any]:
        return super()._prepare(_raw_as(self.return_type, samples))


def _check_return_type(value: str) -> Literal["tensor", "bytes"]:
    if value == "tensor":
        return "tensor"
    if value == "bytes":
        return "bytes"
    raise ConfigError(f"return_type must be 'tensor' or 'bytes' (got return_type={value!r})")


def _raw_as(return_type: str, samples: list[Any]) -> list[Any]:
    if return_type == "bytes":
        return samples
    return [torch.frombuffer(bytearray(s), dtype=torch.uint8) if isinstance(s, bytes | bytearray | memoryview)
            else s for s in samples]  # fmt: skip


__all__ = [
    "DEFAULT_PREFETCH",
    "DEFAULT_READ_SIZE",
    "ObjectStoreIterableDataset",
    "ObjectStoreMapDataset",
    "S3Collate",
    "S3IterableDataset",
    "S3MapDataset",
    "distributed_rank",
    "s3dlio_collate",
    "to_tensor",
]
