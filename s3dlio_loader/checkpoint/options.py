"""Options of the checkpoint layer, each overridable by an ``S3DLIO_CHECKPOINT_*`` variable.

>>> CheckpointOptions(shard_size=64 << 20).shard_size
67108864
>>> CheckpointOptions().shard_size >> 20
48
>>> CheckpointOptions.env_var("shard_size")
'S3DLIO_CHECKPOINT_SHARD_SIZE'
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..errors import ConfigError
from ..options import MiB, OptionsBase, _opt

READ_MODES = ("auto", "whole", "ranges")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions(OptionsBase):
    """How checkpoints are laid out, written and read.

    Storage knobs (endpoint, credentials, retries) belong to the Store's ``storage_options``
    and :class:`~s3dlio_loader.options.StoreOptions`; these are the checkpoint's own.
    """

    env_prefix: ClassVar[str] = "S3DLIO_CHECKPOINT_"

    shard_size: int = _opt(
        48 * MiB,
        "Target size of one shard object. Tensors are packed into shards of at most this many bytes; a "
        "larger tensor spans several shards, so that every object is uploaded and fetched in parallel. "
        "The default keeps each shard one PUT request (gcsfs switches to resumable uploads above 50 MiB, "
        "s3fs to multipart above 100 MiB).",
    )
    max_in_flight: int = _opt(4, "Most shards (or DCP files) written or read at once.")
    verify: bool = _opt(True, "Check every tensor's CRC32C when loading.")
    fsync: bool = _opt(
        True, "On file:// and direct://, fsync shards before the manifest is written, then the manifest."
    )
    read_mode: str = _opt(
        "auto",
        "How shards are fetched: whole (one GET per shard), ranges (requests of about read_chunk bytes "
        "cut at tensor boundaries) or auto (file://: each shard read with one preadv straight into the "
        "arrays' memory; other schemes: whole).",
    )
    read_chunk: int = _opt(16 * MiB, "With read_mode=ranges, the size of one range request.")
    readahead: int = _opt(
        16 * MiB, "open_checkpoint_reader: bytes fetched per range request (its read-ahead window)."
    )
    reuse_staging: bool = _opt(
        True,
        "save_async: keep the host staging buffers between saves, so the next snapshot copies into "
        "memory that is already mapped (released by close()).",
    )

    def __post_init__(self) -> None:
        for name in ("shard_size", "max_in_flight", "read_chunk", "readahead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CheckpointOptions.{name} must be a positive integer (got {name}={value!r})")
        if self.read_mode not in READ_MODES:
            raise ConfigError(
                f"CheckpointOptions.read_mode must be one of {', '.join(READ_MODES)} (got read_mode={self.read_mode!r})"
            )


__all__ = ["READ_MODES", "CheckpointOptions"]
