"""TensorFlow: the engine's batches as a ``tf.data.Dataset`` with a derived ``output_signature``.

:func:`tf_dataset` builds a :class:`~s3dlio_loader.Loader` (worker processes fetch, decode and
collate whole batches into shared memory) and wraps it with ``tf.data.Dataset.from_generator``.
The generator does no I/O: it only hands the ready batches (numpy views of shared memory)
to TensorFlow, so the GIL-holding part of the pipeline stays small whatever the storage.

The ``output_signature`` is derived, not guessed: the first samples of the dataset are read
once in this process, collated like a real batch, and every leaf becomes a ``tf.TensorSpec``
with a ``None`` batch dimension (dict batches become dicts of specs; bytes and strings become
``tf.string``). Pass ``output_signature=`` to override it (for example when later samples
have other shapes than the first ones).

Each iteration of the returned dataset (each Keras epoch, each ``for`` loop) iterates the
loader once: a finished iteration moves the loader to its next epoch, so shuffling changes
per epoch. One iterator of the dataset at a time: a second concurrent iterator restarts the
loader under the first one.

**Worker start method.** TensorFlow computes in this process, and a forked child that used
TensorFlow would hang; the loader's workers never use TensorFlow (they use numpy and the
storage layer only), and forking them after TensorFlow has started its thread pools is safe
(tested in ``tests/adapters/test_tf.py``, Keras training included), so workers are forked,
which starts them in ~0.1 s. Once a JAX backend is initialised in the same process, JAX
warns on every fork; the workers are then started with ``forkserver`` instead (see
:func:`s3dlio_loader.adapters.jax.choose_start_method`). A ``transform`` that itself calls
TensorFlow must run with ``start_method="spawn"``.

>>> # ds = tf_dataset("s3://bucket/train/", format="npz", rows=True, batch_size=64, shuffle=True)
>>> # model.fit(ds, epochs=3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import shm
from ..engine.dataset import Dataset, Source
from ..engine.loader import Loader, LoaderOptions
from ..engine.plan import ShuffleMode
from ..errors import ConfigError, MissingDependencyError
from ..formats import OnError
from .jax import choose_start_method

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["from_loader", "output_signature", "tf_dataset"]


def _tf() -> Any:
    try:
        import tensorflow
    except ImportError as exc:
        raise MissingDependencyError(
            "the TensorFlow adapter needs tensorflow: pip install 's3dlio-loader[tf]'"
        ) from exc
    return tensorflow


def tf_dataset(
    source: Source | Dataset,
    format: str | None = None,
    *,
    batch_size: int = 32,
    shuffle: ShuffleMode | bool = False,
    seed: int = 0,
    num_workers: int = 2,
    input_context: Any = None,
    prefetch: int | None = 2,
    drop_last: bool = False,
    transform: Callable[[Any], Any] | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
    output_signature: Any = None,
    start_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    on_error: OnError = "raise",
    options: LoaderOptions | None = None,
    **format_options: Any,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches read by the engine's worker processes.

    Args:
        source, format, **format_options: what to read (see :class:`~s3dlio_loader.Dataset`),
            e.g. ``format="npz", rows=True``.
        batch_size: samples per batch of this input pipeline (with ``tf.distribute``, the
            per-replica size: ``input_context.get_per_replica_batch_size(global_batch)``).
        shuffle, seed: the loader's shuffle (``True``/``"global"``, ``"block"``); the order
            changes each epoch, deterministically from ``(seed, epoch)``.
        num_workers: loader worker processes (0: read in this process on threads).
        input_context: a ``tf.distribute.InputContext``: this pipeline reads shard
            ``input_pipeline_id`` of ``num_input_pipelines`` (overrides ``rank``/``world_size``).
        prefetch: ``Dataset.prefetch`` depth after the generator (``None``: no prefetch;
            ``tf.data.AUTOTUNE`` works).
        drop_last: drop the last partial batch (static batch shapes).
        transform, collate: as for :class:`~s3dlio_loader.Loader` (run in the workers).
        output_signature: the element structure of ``tf.TensorSpec``; derived from the data
            when None (see :func:`output_signature`).
        start_method: how the workers start; None picks fork, or forkserver once a JAX
            backend is initialised in this process.
        rank, world_size: this pipeline's shard when no ``input_context`` is given (default:
            ``RANK``/``WORLD_SIZE`` from the environment, else 0 of 1).
        storage_options, on_error, options: see :class:`~s3dlio_loader.Loader`. The workers
            stop at the end of each epoch here (``persistent_workers=False``): TensorFlow keeps
            the generator alive for an unknown time after the dataset is gone, and waiting
            workers would keep their shared memory that long. Build the Loader yourself and
            use :func:`from_loader` (then ``loader.close()`` when done) to keep them.

    Returns:
        A dataset whose elements are the batches as tensors: a tensor, a tuple or a dict of
        tensors, with its cardinality (``len`` of the loader) declared so that Keras knows the
        steps per epoch (use ``model.fit(ds, shuffle=False)``: the loader shuffles). Build the
        :class:`~s3dlio_loader.Loader` yourself and call :func:`from_loader` when you need it at
        hand (``set_epoch``, ``state_dict``).

    Raises:
        MissingDependencyError: tensorflow is not installed.
        ConfigError: a sample leaf has no TensorFlow equivalent (see :func:`output_signature`).
    """
    _tf()
    if input_context is not None:
        rank = int(input_context.input_pipeline_id)
        world_size = int(input_context.num_input_pipelines)
    if options is None:
        # TensorFlow keeps the batches it holds (prefetch buffer, the one in use) as zero-copy views
        # of their shared-memory slots: give each worker enough slots that this never stalls it.
        options = LoaderOptions.from_env()
        depth = _AUTOTUNE_GUESS if prefetch is not None and prefetch < 0 else (prefetch or 0)
        held = depth + _HELD_BY_TF
        options = options.replace(slots_per_worker=max(options.slots_per_worker,
                                                       -(-held // max(1, num_workers)) + 1))  # fmt: skip
    opts = options.replace(start_method=choose_start_method(start_method, options), persistent_workers=False)
    loader = Loader(source, format, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                    rank=rank, world_size=world_size, drop_last=drop_last, transform=transform, collate=collate,
                    storage_options=storage_options, on_error=on_error, options=opts,
                    **format_options)  # fmt: skip
    return from_loader(loader, output_signature=output_signature, prefetch=prefetch)


#: Batches TensorFlow may hold besides its prefetch buffer: the generator's, the one in use, Keras's.
_HELD_BY_TF = 3
#: Prefetch depth assumed for ``tf.data.AUTOTUNE`` when sizing the loader's slots.
_AUTOTUNE_GUESS = 4


def from_loader(loader: Loader, *, output_signature: Any = None, prefetch: int | None = 2,
                known_cardinality: bool = True) -> tf.data.Dataset:  # fmt: skip
    """Wrap an existing :class:`~s3dlio_loader.Loader` as a ``tf.data.Dataset``.

    Use this to keep the loader at hand: ``loader.set_epoch(e)``, and ``loader.state_dict()``
    (which counts the batches handed to tf.data, including the ``prefetch`` ones not yet used).
    Each iteration of the dataset is one iteration of the loader.

    With ``known_cardinality`` (default) the dataset declares ``len(loader)`` batches
    (``tf.data.experimental.assert_cardinality``), so Keras knows the steps of an epoch
    instead of warning that the input "ran out of data" after the first one. Pass False when
    the loader resumes mid-epoch (``load_state_dict``): that epoch is shorter.
    """
    tf = _tf()
    signature = output_signature if output_signature is not None else _derive_signature(loader)

    def batches() -> Iterator[Any]:
        for batch in loader:
            yield to_tf_compatible(batch)

    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    if known_cardinality:
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(loader)))
    if prefetch is not None and prefetch != 0:
        ds = ds.prefetch(prefetch)
    return ds


def output_signature(loader: Loader) -> Any:
    """The ``tf.TensorSpec`` structure of ``loader``'s batches, from its first samples.

    The first ``min(batch_size, len(dataset))`` samples (by sample id) are read in this
    process, transformed and collated as the workers would, and each leaf is described with a
    ``None`` batch dimension. Numeric and bool arrays keep their dtype; bytes, ``str``, and
    numpy ``S``/``U``/object arrays become ``tf.string``; dicts and tuples keep their
    structure.

    Raises:
        ConfigError: a leaf has no TensorFlow equivalent: samples whose arrays differ in
            shape (they do not stack: pad them in a ``transform`` or a ``collate``, or pass
            ``output_signature``), or a structured numpy dtype.
    """
    return _derive_signature(loader)


def _derive_signature(loader: Loader) -> Any:
    ds = loader.dataset
    n = min(loader.batch_size, len(ds))
    samples = ds.read_samples(np.arange(n, dtype=np.int64))
    if loader.transform is not None:
        samples = [loader.transform(s) for s in samples]
    batch = loader.collate_fn(samples) if loader.collate_fn is not None else shm.collate(samples)
    return _spec(to_tf_compatible(batch), "batch")


def to_tf_compatible(batch: Any) -> Any:
    """``batch`` with every leaf in a form ``tf.convert_to_tensor`` takes: numeric arrays as
    they are (no copy), bytes-likes and strings as numpy object arrays of ``bytes``."""
    if isinstance(batch, np.ndarray):
        if batch.dtype.kind == "U":
            return np.char.encode(batch, "utf-8")
        if batch.dtype.kind == "O":
            return np.array([_as_bytes(v) for v in batch.reshape(-1)], dtype=object).reshape(batch.shape)
        return batch
    if isinstance(batch, dict):
        return {k: to_tf_compatible(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_tf_compatible(v) for v in batch)
    if isinstance(batch, list):
        if all(_is_text(v) for v in batch):
            return np.array([_as_bytes(v) for v in batch], dtype=object)
        return batch  # arrays of different shapes: _spec explains the problem
    if _is_text(batch):
        return _as_bytes(batch)
    return batch


def _is_text(v: Any) -> bool:
    return isinstance(v, bytes | bytearray | memoryview | str | np.bytes_ | np.str_)


def _as_bytes(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, memoryview | bytearray):
        return bytes(v)
    return v


def _spec(leaf: Any, where: str) -> Any:
    tf = _tf()
    if isinstance(leaf, dict):
        return {k: _spec(v, f"{where}[{k!r}]") for k, v in leaf.items()}
    if isinstance(leaf, tuple):
        return tuple(_spec(v, f"{where}[{i}]") for i, v in enumerate(leaf))
    if isinstance(leaf, list):
        shapes = sorted({getattr(v, "shape", type(v).__name__) for v in leaf}, key=str)[:3]
        raise ConfigError(
            f"{where}: the samples do not stack into one tensor (shapes or types {shapes}); make them "
            "the same shape in a transform, pad them in a collate, or pass output_signature= explicitly"
        )
    arr = np.asarray(leaf)
    if arr.dtype.fields is not None:
        raise ConfigError(f"{where}: structured dtype {arr.dtype} has no TensorFlow equivalent; split its "
                          "fields into a dict in a transform")  # fmt: skip
    if arr.dtype.kind in "OSU":
        dtype = tf.string
    else:
        try:
            dtype = tf.as_dtype(arr.dtype)
        except TypeError as exc:
            raise ConfigError(f"{where}: dtype {arr.dtype} has no TensorFlow equivalent ({exc})") from None
    if arr.ndim == 0:  # a value a custom collate put in the batch as is
        return tf.TensorSpec(shape=(), dtype=dtype)
    return tf.TensorSpec(shape=(None, *arr.shape[1:]), dtype=dtype)
