"""s3dlio-compatible entry points, for code migrating from the Rust library s3dlio.

``create_dataset(uri, options)`` and ``create_async_loader(uri, options)`` take s3dlio's
option dict and return a :class:`CompatLoader`: random access to the items (``len()``,
``get(i)``), iteration of items (``for item in loader``), of batches (``loader.batches()``),
and ``async for batch in loader``, as s3dlio's loader offers.

Every option is honoured (s3dlio ignores several of them in some modes):

=============== ===================================================================
``format``      ``"raw"`` (default, as s3dlio: each object's bytes), ``"parquet"``
                (one item per row group), ``"npy"``, ``"npz"``, ``"tfrecord"``, ``"hdf5"``
``decode``      parquet: ``"raw"`` (default, the fetched column chunks as a
                :class:`~s3dlio_loader.formats.parquet.RawRowGroup`), ``"arrow"`` (a
                pyarrow Table) or ``"numpy"``; raw: a callable applied to each object's bytes
``columns``     parquet: the column indices (or names) to fetch
``footer_cap``  parquet: bytes read from the end of each file to find its footer
``prefetch``    items in flight: each batch's objects are fetched on up to this many
                threads, and ``ceil(prefetch / batch_size)`` batches are read ahead
``batch_size``  items per batch (default 1)
``shuffle``     ``True``/``False`` or ``"global"``/``"block"``; ``seed``: its seed
``num_workers`` worker processes of the prefetch engine (default 0: threads only)
``drop_last``   drop the last partial batch
=============== ===================================================================

Any other key raises :class:`~s3dlio_loader.errors.ConfigError` naming it (s3dlio keys
that have an equivalent here say which). Items differ from s3dlio's in type, not meaning:
Parquet row groups are RawRowGroup objects or tables rather than Arrow IPC bytes, and with
``num_workers > 0`` bytes arrive as read-only memoryviews into shared memory.

The torch datasets under s3dlio's names, ``ObjectStoreIterableDataset`` and
``ObjectStoreMapDataset`` (raw objects as uint8 tensors, like s3dlio's), are importable from
here too; they live in :mod:`s3dlio_loader.adapters.torch`, which is imported (with torch)
only when one of them is used.

>>> import tempfile, pathlib
>>> d = tempfile.mkdtemp(); _ = [pathlib.Path(d, f"{i}.bin").write_bytes(bytes([i]) * 3) for i in range(4)]
>>> loader = create_async_loader(f"file://{d}/", {"batch_size": 2})
>>> len(loader), [list(map(bytes, batch)) for batch in loader.batches()]
(4, [[b'\\x00\\x00\\x00', b'\\x01\\x01\\x01'], [b'\\x02\\x02\\x02', b'\\x03\\x03\\x03']])
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from .engine import Dataset, Loader, LoaderOptions
from .engine.plan import normalize_shuffle
from .errors import ConfigError

if TYPE_CHECKING:  # imported on first use by __getattr__ (they need torch)
    from .adapters.torch import ObjectStoreIterableDataset, ObjectStoreMapDataset, S3IterableDataset, S3MapDataset

#: The s3dlio option keys accepted, with their defaults.
OPTION_DEFAULTS: dict[str, Any] = {
    "format": "raw",
    "decode": None,
    "columns": None,
    "footer_cap": None,
    "prefetch": 8,
    "batch_size": 1,
    "shuffle": False,
    "seed": 0,
    "num_workers": 0,
    "drop_last": False,
}

#: s3dlio keys with no direct counterpart, and what to use instead.
_OTHER_S3DLIO_KEYS = {
    "decode_mode": "use 'decode'",
    "auto_tune": "prefetch and io concurrency are explicit here: set 'prefetch'",
    "reader_mode": "whole objects are read in one request up to StoreOptions.range_threshold "
                   "(S3DLIO_RANGE_THRESHOLD), above it in concurrent ranges",
    "part_size": "the range size of large objects is StoreOptions.range_chunk (S3DLIO_RANGE_CHUNK)",
    "max_inflight_parts": "requests in flight per Store are StoreOptions.max_in_flight (S3DLIO_MAX_IN_FLIGHT)",
    "enable_sharding": "the torch datasets always shard over ranks and DataLoader workers",
}

_PARQUET_DECODES = ("raw", "arrow", "numpy")


def parse_options(options: Mapping[str, Any] | None, *, where: str = "create_async_loader") -> dict[str, Any]:
    """s3dlio's option dict, checked and completed with the defaults.

    Raises:
        ConfigError: an unknown key (named), or a value of the wrong type or range.
    """
    given = dict(options or {})
    for key in given:
        if key not in OPTION_DEFAULTS:
            hint = _OTHER_S3DLIO_KEYS.get(key)
            raise ConfigError(
                f"{where}: unknown option {key!r}"
                + (f" ({hint})" if hint else "")
                + f"; known options: {sorted(OPTION_DEFAULTS)}"
            )
    opts = {**OPTION_DEFAULTS, **given}
    for key in ("prefetch", "batch_size"):
        _check_int(where, key, opts[key], minimum=1)
    _check_int(where, "num_workers", opts["num_workers"], minimum=0)
    _check_int(where, "seed", opts["seed"], minimum=None)
    if not isinstance(opts["drop_last"], bool):
        raise ConfigError(f"{where}: drop_last must be a bool (got drop_last={opts['drop_last']!r})")
    normalize_shuffle(opts["shuffle"])
    if not isinstance(opts["format"], str):
        raise ConfigError(f"{where}: format must be a string (got format={opts['format']!r})")
    fmt = opts["format"]
    for key in ("columns", "footer_cap"):
        if opts[key] is not None and fmt != "parquet":
            raise ConfigError(f"{where}: option {key!r} applies to format='parquet' (format is {fmt!r})")
    decode = opts["decode"]
    if fmt == "parquet":
        if decode is None:
            opts["decode"] = "raw"
        elif decode not in _PARQUET_DECODES:
            raise ConfigError(f"{where}: decode must be one of {_PARQUET_DECODES} for parquet (got decode={decode!r})")
        if opts["footer_cap"] is not None:
            _check_int(where, "footer_cap", opts["footer_cap"], minimum=8)
    elif decode is not None and not (fmt == "raw" and callable(decode)):
        raise ConfigError(
            f"{where}: decode applies to format='parquet' (a mode name) and format='raw' (a callable applied "
            f"to each object's bytes); got decode={decode!r} with format={fmt!r}"
        )
    return opts


def _check_int(where: str, key: str, value: Any, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ConfigError(f"{where}: {key} must be an integer{bound} (got {key}={value!r})")


def _format_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    if opts["format"] == "parquet":
        out: dict[str, Any] = {"items": "row_group", "decode": opts["decode"]}
        if opts["columns"] is not None:
            out["columns"] = list(opts["columns"])
        if opts["footer_cap"] is not None:
            out["footer_cap"] = opts["footer_cap"]
        return out
    if opts["format"] == "raw" and opts["decode"] is not None:
        return {"decode": opts["decode"]}
    return {}


class CompatLoader:
    """Items of the objects under a URI, in the order and batches s3dlio's options ask for.

    Built by :func:`create_dataset` and :func:`create_async_loader`. Iterating again after a
    full pass moves to the next epoch (a new shuffle), as :class:`~s3dlio_loader.Loader` does.

    Attributes:
        options: the completed s3dlio options.
        dataset: the engine :class:`~s3dlio_loader.Dataset`.
    """

    def __init__(
        self,
        uri: str,
        options: Mapping[str, Any] | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        where: str = "create_async_loader",
    ) -> None:
        self.options = parse_options(options, where=where)
        opts = self.options
        self.dataset = Dataset(uri, opts["format"], storage_options=storage_options, io_threads=opts["prefetch"],
                               **_format_options(opts))  # fmt: skip
        read_ahead = max(1, math.ceil(opts["prefetch"] / opts["batch_size"]))
        self.loader = Loader(self.dataset, batch_size=opts["batch_size"], shuffle=opts["shuffle"], seed=opts["seed"],
                             num_workers=opts["num_workers"], drop_last=opts["drop_last"], collate=_as_list,
                             options=LoaderOptions.from_env(prefetch_batches=read_ahead))  # fmt: skip

    # ------------------------------------------------------------------ random access

    def __len__(self) -> int:
        return len(self.dataset)

    def len(self) -> int:
        """Number of items (s3dlio's spelling of ``len(loader)``)."""
        return len(self.dataset)

    def get(self, index: int) -> Any:
        """Item ``index`` (negative counts from the end)."""
        n = len(self.dataset)
        i = int(index) + n if int(index) < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"item {index} out of range for {n} items")
        return self.dataset.read_samples([i])[0]

    __getitem__ = get

    def keys(self) -> list[str]:
        """One key per item: the object URI, with ``#rg<N>`` (parquet) or ``#<N>`` for items inside objects."""
        out = []
        tag = "#rg" if self.dataset.format == "parquet" else "#"
        for info, count in zip(self.dataset.objects, self.dataset.sizes.tolist(), strict=True):
            if self.dataset.format == "raw" and count == 1:
                out.append(info.uri)
            else:
                out.extend(f"{info.uri}{tag}{j}" for j in range(count))
        return out

    # ------------------------------------------------------------------ iteration

    def batches(self) -> Iterator[list[Any]]:
        """One epoch of batches (lists of items)."""
        return iter(self.loader)

    def items(self) -> Iterator[Any]:
        """One epoch of items."""
        for batch in self.loader:
            yield from batch

    def __iter__(self) -> Iterator[Any]:
        return self.items()

    def __aiter__(self) -> AsyncIterator[list[Any]]:
        """``async for batch in loader``: batches, each read in a worker thread (the event loop never blocks)."""
        return self._abatches()

    async def _abatches(self) -> AsyncIterator[list[Any]]:
        batches = iter(self.loader)
        end = object()
        try:
            while True:
                batch = await asyncio.to_thread(next, batches, end)
                if batch is end:
                    return
                yield cast(list[Any], batch)
        finally:
            close: Callable[[], None] | None = getattr(batches, "close", None)
            if close is not None:
                close()

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle for the next pass."""
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch (see :meth:`Loader.state_dict`)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position (see :meth:`Loader.load_state_dict`)."""
        self.loader.load_state_dict(state)

    def close(self) -> None:
        """Stop worker processes, if any."""
        self.loader.close()

    def __enter__(self) -> CompatLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.options.items() if v != OPTION_DEFAULTS[k]}
        return f"CompatLoader({self.dataset!r}, options={shown})"


def _as_list(samples: list[Any]) -> list[Any]:
    return list(samples)


def create_dataset(uri: str, options: Mapping[str, Any] | None = None, *,
                   storage_options: Mapping[str, Any] | None = None) -> CompatLoader:  # fmt: skip
    """s3dlio's ``create_dataset(uri, options)``: the items under ``uri`` (``len``, ``get(i)``, ``keys()``).

    ``storage_options`` (fsspec, e.g. an S3 endpoint) is this library's addition; s3dlio reads
    endpoints from the environment.

    Raises:
        ConfigError: an unknown option key (named) or a bad value.
    """
    return CompatLoader(uri, options, storage_options=storage_options, where="create_dataset")


def create_async_loader(uri: str, options: Mapping[str, Any] | None = None, *,
                        storage_options: Mapping[str, Any] | None = None) -> CompatLoader:  # fmt: skip
    """s3dlio's ``create_async_loader(uri, options)``: ``for item in loader``, ``async for batch in loader``.

    Raises:
        ConfigError: an unknown option key (named) or a bad value.
    """
    return CompatLoader(uri, options, storage_options=storage_options, where="create_async_loader")


#: Torch classes importable from this module; their module (and torch) is imported on first use.
_TORCH_NAMES = ("ObjectStoreIterableDataset", "ObjectStoreMapDataset", "S3IterableDataset", "S3MapDataset")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from .adapters import torch as torch_adapter

        return getattr(torch_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OPTION_DEFAULTS",
    "CompatLoader",
    "ObjectStoreIterableDataset",
    "ObjectStoreMapDataset",
    "S3IterableDataset",
    "S3MapDataset",
    "create_async_loader",
    "create_dataset",
    "parse_options",
]
