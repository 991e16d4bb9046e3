"""Checkpoints of model and optimizer state to any URI, without pickle.

* :class:`CheckpointStore`: numbered checkpoints (``save``, ``save_async``, ``load``,
  ``list``, ``latest``, ``delete``, ``keep_last``) of nested dicts/lists/tuples of torch
  tensors, numpy arrays, JAX arrays and plain values. Tensor data goes to safetensors shards
  written in parallel, a JSON manifest written last makes the checkpoint visible.
* :func:`open_checkpoint_writer` / :func:`open_checkpoint_reader`: file objects over any URI
  for ``torch.save`` / ``torch.load`` (streaming writes, seekable ranged reads).
* :class:`DCPStorageWriter` / :class:`DCPStorageReader`: storage for
  ``torch.distributed.checkpoint`` on any URI (imported on first use: they need torch).

Importing this package imports neither torch nor JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    UnsupportedStateError,
)
from .options import CheckpointOptions
from .store import CheckpointInfo, CheckpointStore, ShardWritten
from .streams import CheckpointReader, CheckpointWriter, open_checkpoint_reader, open_checkpoint_writer

if TYPE_CHECKING:
    from .dcp import DCPStorageReader, DCPStorageWriter

_LAZY = {"DCPStorageWriter": "dcp", "DCPStorageReader": "dcp"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointOptions",
    "CheckpointReader",
    "CheckpointStore",
    "CheckpointWriter",
    "DCPStorageReader",
    "DCPStorageWriter",
    "ShardWritten",
    "UnsupportedStateError",
    "open_checkpoint_reader",
    "open_checkpoint_writer",
]
