"""Format readers and writers: Parquet, NPY, NPZ, TFRecord, HDF5 and raw objects.

``open(uri)`` returns a :class:`~s3dlio_loader.formats.base.Reader` (``len``, ``reader[i]``,
``read_batch``); ``write(uri, data, format=...)`` writes one object. Format modules are
imported on first use, so ``import s3dlio_loader`` never imports h5py or pyarrow's heavier
parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..errors import ConfigError
from ..storage import Store
from .base import FormatIndex, OnError, Reader


class FormatSpec(NamedTuple):
    """Where a format's reader class and writer function live, and its file extensions."""

    module: str
    reader: str
    writer: str
    extensions: tuple[str, ...]


#: Registered formats. A format module provides a Reader subclass and a ``write`` function
#: ``write(uri, data, *, store, **options) -> None``.
FORMATS: dict[str, FormatSpec] = {
    "parquet": FormatSpec("parquet", "ParquetReader", "write_parquet", (".parquet", ".parq", ".pq")),
    "npy": FormatSpec("npy", "NpyReader", "write_npy", (".npy",)),
    "npz": FormatSpec("npz", "NpzReader", "write_npz", (".npz",)),
    "tfrecord": FormatSpec("tfrecord", "TFRecordReader", "write_tfrecord",
                           (".tfrecord", ".tfrecords", ".tfr", ".tfrecord.gz", ".tfrecord.zlib")),
    "hdf5": FormatSpec("hdf5", "HDF5Reader", "write_hdf5", (".h5", ".hdf5", ".hdf")),
    "raw": FormatSpec("raw", "RawReader", "write_raw", ()),
}


def infer_format(uri: str) -> str:
    """The format name for ``uri`` from its extension.

    Raises:
        ConfigError: no registered format has that extension (pass ``format=`` explicitly).
    """
    lowered = uri.lower()
    best: tuple[int, str] | None = None
    for name, spec in FORMATS.items():
        for ext in spec.extensions:
            if lowered.endswith(ext) and (best is None or len(ext) > best[0]):
                best = (len(ext), name)
    if best is None:
        raise ConfigError(
            f"cannot infer the format of {uri!r} from its extension; pass format= one of {sorted(FORMATS)}"
        )
    return best[1]


def _spec(format: str) -> FormatSpec:
    try:
        return FORMATS[format]
    except KeyError:
        raise ConfigError(f"unknown format {format!r}; known formats: {sorted(FORMATS)}") from None


def reader_class(format: str) -> type[Reader]:
    """The Reader subclass of ``format`` (imports its module)."""
    spec = _spec(format)
    module = importlib.import_module(f"{__name__}.{spec.module}")
    cls: type[Reader] = getattr(module, spec.reader)
    return cls


def writer_function(format: str) -> Callable[..., Any]:
    """The writer function of ``format`` (imports its module)."""
    spec = _spec(format)
    module = importlib.import_module(f"{__name__}.{spec.module}")
    fn: Callable[..., Any] = getattr(module, spec.writer)
    return fn


def open(
    uri: str,
    format: str | None = None,
    *,
    store: Store | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Reader:
    """A reader over the samples of one object (format from the extension when None)."""
    cls = reader_class(format or infer_format(uri))
    return cls(uri, store=store, storage_options=storage_options, **options)


def write(
    uri: str,
    data: Any,
    format: str | None = None,
    *,
    store: Store | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Write ``data`` as one object of ``format`` (from the extension when None)."""
    from ..storage import store_for

    fn = writer_function(format or infer_format(uri))
    fn(uri, data, store=store if store is not None else store_for(uri, storage_options), **options)


__all__ = [
    "FORMATS",
    "FormatIndex",
    "FormatSpec",
    "OnError",
    "Reader",
    "infer_format",
    "open",
    "reader_class",
    "write",
    "writer_function",
]
