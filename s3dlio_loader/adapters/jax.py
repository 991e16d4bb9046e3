"""JAX: batches as ``jax.Array``\\ s placed with a sharding, one shard of the data per JAX process.

:class:`JaxLoader` iterates a :class:`~s3dlio_loader.Loader` whose rank and world size are
``jax.process_index()`` and ``jax.process_count()``, so every process reads a disjoint shard
of each epoch, and turns every numeric leaf of each batch into a global ``jax.Array`` with
the given sharding (default: the batch dimension split over every device of every process,
``NamedSharding(Mesh(jax.devices(), ("data",)), PartitionSpec("data"))``). With several
processes the global array is assembled from each process's local batch with
``jax.make_array_from_process_local_data``: the leading dimension of a global batch is
``batch_size * jax.process_count()``.

**Device prefetch.** ``prefetch`` batches (default 2) are placed ahead: the transfer of the
next batch (``jax.device_put``, asynchronous) runs while the current one is used.

**Resumable.** ``state_dict()`` / ``load_state_dict()`` delegate to the loader, counting only
the batches handed to the caller (not the ones prefetched to the devices), so a checkpoint
taken after step ``k`` resumes at batch ``k + 1``.

**Leaves.** Raw bytes (``format="raw"``, or bytes a transform returns) are turned into
``uint8`` arrays in the workers, so equal-length objects stack into one ``[batch, length]``
array; numeric and bool arrays become ``jax.Array``\\ s; string and object arrays, and lists
of samples that did not stack (different shapes), stay on the host as they came.

**Worker start method.** JAX is multithreaded: a forked child that used JAX would deadlock,
and JAX warns (``RuntimeWarning: os.fork() was called``) on every fork once a backend is
initialised, which this adapter does (``jax.process_index()``). So the loader's workers are
started with ``forkserver`` (see :func:`choose_start_method`): no fork of this process, at the
price of a slower worker start (each worker imports the main module, so ~1-3 s per epoch
with 2 workers of a script that imports jax, where fork takes ~0.1 s). The workers never use
JAX themselves; pass ``start_method="fork"`` to trade the warning for the faster start, as
long as your ``transform`` does not call JAX. Run a script that uses workers under an
``if __name__ == "__main__":`` guard (the workers import the main module).

>>> # it = JaxLoader("s3://bucket/train/", format="npz", rows=True, batch_size=64, shuffle=True)
>>> # for batch in it: state = train_step(state, batch)      # batch["x"] is a jax.Array
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..engine.dataset import Dataset, Source
from ..engine.loader import Loader, LoaderOptions
from ..engine.plan import ShuffleMode
from ..errors import ConfigError, MissingDependencyError
from ..formats import OnError

__all__ = ["JaxLoader", "bytes_to_arrays", "choose_start_method", "jax_backend_initialized"]

_START_METHODS = ("fork", "spawn", "forkserver")


def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise MissingDependencyError("the JAX adapter needs jax: pip install 's3dlio-loader[jax]'") from exc
    return jax


def jax_backend_initialized() -> bool:
    """Whether a JAX backend has been initialised in this process (then JAX warns on fork).

    Never imports jax: False when jax is not imported.
    """
    xb = sys.modules.get("jax._src.xla_bridge")
    if xb is None:
        return False
    installed = getattr(xb, "_at_fork_handler_installed", None)
    if installed is not None:  # the fork warning exists exactly when this handler is installed
        return bool(installed)
    check = getattr(xb, "backends_are_initialized", None)
    return bool(check()) if callable(check) else True  # unknown jax version: assume initialised


def choose_start_method(requested: str | None, options: LoaderOptions) -> str:
    """The start method for the loader's workers.

    ``requested`` wins when given. Otherwise the method of ``options`` is kept, except that
    ``fork`` becomes ``forkserver`` once a JAX backend is initialised in this process (a fork
    then triggers JAX's RuntimeWarning, an error under ``-W error``), unless the user set
    ``S3DLIO_START_METHOD`` in the environment.

    Raises:
        ConfigError: ``requested`` is not fork, spawn or forkserver.
    """
    if requested is not None:
        if requested not in _START_METHODS:
            raise ConfigError(f"start_method must be one of {_START_METHODS} or None (got {requested!r})")
        return requested
    if options.start_method == "fork" and LoaderOptions.env_var("start_method") not in os.environ \
            and jax_backend_initialized():  # fmt: skip
        return "forkserver"
    return options.start_method


def bytes_to_arrays(sample: Any) -> Any:
    """``sample`` with every bytes-like leaf as a ``uint8`` array (a view, no copy); dicts,
    tuples and lists are walked. Runs in the workers, before collation."""
    if isinstance(sample, bytes | bytearray | memoryview):
        return np.frombuffer(sample, dtype=np.uint8)
    if isinstance(sample, dict):
        return {k: bytes_to_arrays(v) for k, v in sample.items()}
    if isinstance(sample, tuple):
        return tuple(bytes_to_arrays(v) for v in sample)
    if isinstance(sample, list):
        return [bytes_to_arrays(v) for v in sample]
    return sample


#: Batches a training loop may keep alive besides the prefetched ones (in use, still computing, the last one).
_HELD_BY_STEP = 3


class _ThenBytesToArrays:
    """The user's transform followed by :func:`bytes_to_arrays` (picklable for spawned workers)."""

    def __init__(self, transform: Callable[[Any], Any] | None) -> None:
        self.transform = transform

    def __call__(self, sample: Any) -> Any:
        if self.transform is not None:
            sample = self.transform(sample)
        return bytes_to_arrays(sample)


class JaxLoader:
    """Iterate batches as ``jax.Array``\\ s placed with ``sharding``, this process's shard of each epoch.

    Args:
        source, format, **format_options: what to read (see :class:`~s3dlio_loader.Dataset`),
            e.g. ``format="npz", rows=True``.
        batch_size: samples per batch *of this process* (the global batch is
            ``batch_size * world_size``); with the default sharding it must be a multiple of
            ``jax.local_device_count()``.
        sharding: a ``jax.sharding.Sharding`` applied to every leaf of the global batch;
            default: the leading (batch) dimension split over all devices.
        shuffle, seed: the loader's shuffle; the order changes each epoch, deterministically.
        num_workers: loader worker processes (0: read in this process on threads).
        drop_last: drop the last partial batch (default True: the batch dimension must divide
            over the devices, and jit wants static shapes).
        prefetch: batches placed on the devices ahead of the one in use (>= 1).
        rank, world_size: this process's shard; default ``jax.process_index()`` and
            ``jax.process_count()``.
        transform, collate: as for :class:`~s3dlio_loader.Loader` (run in the workers; they
            must not call JAX when workers are forked).
        start_method: the workers' start method (None: see :func:`choose_start_method`).
        storage_options, on_error, options: see :class:`~s3dlio_loader.Loader`.

    Raises:
        MissingDependencyError: jax is not installed.
        ConfigError: a bad argument (the message names it).
    """

    def __init__(
        self,
        source: Source | Dataset,
        format: str | None = None,
        *,
        batch_size: int = 32,
        sharding: Any = None,
        shuffle: ShuffleMode | bool = False,
        seed: int = 0,
        num_workers: int = 2,
        drop_last: bool = True,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[Any], Any] | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        start_method: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        options: LoaderOptions | None = None,
        **format_options: Any,
    ) -> None:
        jax = _jax()
        rank = jax.process_index() if rank is None else rank
        world_size = jax.process_count() if world_size is None else world_size
        if options is None:
            # On the CPU, JAX arrays may alias the batches' shared memory (no copy): the batches on
            # the devices (prefetched, in use, in computations still running) keep their slots.
            options = LoaderOptions.from_env()
            held = prefetch + _HELD_BY_STEP
            options = options.replace(slots_per_worker=max(options.slots_per_worker,
                                                           -(-held // max(1, num_workers)) + 1))  # fmt: skip
        loader = Loader(source, format, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                        rank=rank, world_size=world_size, drop_last=drop_last,
                        transform=_ThenBytesToArrays(transform), collate=collate, storage_options=storage_options,
                        on_error=on_error, options=options, **format_options)  # fmt: skip
        self._setup(loader, sharding, prefetch, start_method)

    @classmethod
    def from_loader(cls, loader: Loader, *, sharding: Any = None, prefetch: int = 2,
                    start_method: str | None = None) -> JaxLoader:  # fmt: skip
        """Wrap an existing loader (its rank/world size should be the JAX process index/count).

        The loader's start method is set with :func:`choose_start_method`; bytes leaves are
        not converted (add :func:`bytes_to_arrays` to its transform to get arrays).
        """
        self = cls.__new__(cls)
        self._setup(loader, sharding, prefetch, start_method)
        return self

    def _setup(self, loader: Loader, sharding: Any, prefetch: int, start_method: str | None) -> None:
        jax = _jax()
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"prefetch must be an int >= 1 (got {prefetch=})")
        loader.options = loader.options.replace(start_method=choose_start_method(start_method, loader.options))
        if sharding is None:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(jax.devices()), ("data",))
            sharding = NamedSharding(mesh, PartitionSpec("data"))
            local = jax.local_device_count()
            if loader.batch_size % local:
                raise ConfigError(f"batch_size={loader.batch_size} must be a multiple of the {local} local devices "
                                  "the default sharding splits it over (or pass sharding=)")  # fmt: skip
        self.loader = loader
        self.sharding = sharding
        self.prefetch = prefetch
        self._yielded = 0  # batches handed to the caller in the current plan

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Any]:
        """One epoch (the rest of it after :meth:`load_state_dict`); the next call moves to the next epoch."""
        batches = iter(self.loader)
        self._yielded = 0
        placed: deque[Any] = deque()
        try:
            for batch in batches:
                placed.append(self._place(batch, "batch"))  # the transfer starts now, asynchronously
                if len(placed) >= self.prefetch:
                    self._yielded += 1
                    yield placed.popleft()
            while placed:
                self._yielded += 1
                yield placed.popleft()
        finally:
            placed.clear()
            batches.close()  # type: ignore[attr-defined]

    def _place(self, tree: Any, where: str) -> Any:
        if isinstance(tree, dict):
            return {k: self._place(v, f"{where}[{k!r}]") for k, v in tree.items()}
        if isinstance(tree, tuple):
            return tuple(self._place(v, f"{where}[{i}]") for i, v in enumerate(tree))
        if not isinstance(tree, np.ndarray) or tree.dtype.kind in "OSUMm" or tree.dtype.fields is not None \
                or tree.ndim == 0:  # fmt: skip
            return tree  # strings, objects, dates, records, lists that did not stack: left on the host
        jax = _jax()
        try:
            if self.sharding.is_fully_addressable:
                return jax.device_put(tree, self.sharding)
            return jax.make_array_from_process_local_data(self.sharding, tree)
        except ValueError as exc:
            raise ConfigError(f"{where} of shape {tree.shape} cannot be placed with {self.sharding} ({exc}); with "
                              "the default sharding use a batch_size that is a multiple of the local devices "
                              "and drop_last=True") from exc  # fmt: skip

    def __len__(self) -> int:
        """Batches of this process in the current epoch."""
        return len(self.loader)

    @property
    def epoch(self) -> int:
        """The epoch the next (or current) iteration reads."""
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next iteration."""
        self.loader.set_epoch(epoch)
        self._yielded = 0

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches handed to the caller (prefetched ones not counted)."""
        state = self.loader.state_dict()
        state["consumed"] = min(int(state["consumed"]), self._yielded * int(state["batch_size"]))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position: the next iteration yields exactly the rest of that epoch."""
        self.loader.load_state_dict(state)
        self._yielded = 0

    def close(self) -> None:
        """Stop the loader's workers (idempotent)."""
        self.loader.close()

    def __enter__(self) -> JaxLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JaxLoader({self.loader!r}, sharding={self.sharding}, prefetch={self.prefetch})"
