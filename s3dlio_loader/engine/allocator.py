"""Keep glibc's malloc from handing batch memory back to the kernel after every batch.

A loader holds a batch of samples (say 32 objects of 256 KiB) and then frees it. With glibc's
defaults, the freed memory at the top of the heap is returned to the kernel as soon as more
than twice the (dynamic) mmap threshold is free, and allocations above 128 KiB are served by
``mmap`` until a first such block is freed. Either way the next batch is built in fresh pages,
and every 4 KiB page costs a fault: on the project's machine, reading 2000 local objects of
256 KiB in batches of 32 ran at ~4k objects/s with the defaults and ~20-29k with the settings
below, the same as reading them one at a time (``benchmarks/loaders.py`` shows the effect on
the whole path).

:func:`tune_allocator` sets two ``mallopt`` parameters, once per process, in every process
that reads samples (the first read of a :class:`~s3dlio_loader.Dataset` in a process calls
it): ``M_MMAP_THRESHOLD`` (blocks up to this size come from the heap and are reused; glibc's
own dynamic threshold stops at the same 32 MiB on 64-bit machines) and ``M_TRIM_THRESHOLD``
(free memory kept at the top of the heap before it is returned). The process keeps up to
``trim_threshold`` bytes of freed memory for reuse instead of returning it.

Nothing is changed when the process runs on another C library, when
``S3DLIO_MALLOC_TUNE=0``, or when the user set malloc's own variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, or ``glibc.malloc.*`` in
``GLIBC_TUNABLES``): their choice wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..options import DOCUMENTED_OPTIONS, MiB, OptionsBase, _opt

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit machines).
_MAX_MMAP_THRESHOLD = 32 * MiB
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@dataclass(frozen=True)
class AllocatorOptions(OptionsBase):
    """How glibc's malloc is tuned in processes that read samples (Linux with glibc only).

    Variables are spelled ``S3DLIO_MALLOC_<NAME>`` (``S3DLIO_MALLOC_TUNE=0`` leaves malloc alone).
    """

    env_prefix: ClassVar[str] = "S3DLIO_MALLOC_"

    tune: bool = _opt(
        True, "Set glibc malloc's mmap and trim thresholds (the next two options) in each process that reads samples."
    )
    mmap_threshold: int = _opt(
        32 * MiB, "Allocations up to this size come from the heap, where freed blocks are reused (max 32 MiB)."
    )
    trim_threshold: int = _opt(
        256 * MiB, "Free memory at the top of the heap kept for reuse instead of returned to the kernel."
    )

    def __post_init__(self) -> None:
        if not 0 < self.mmap_threshold <= _MAX_MMAP_THRESHOLD:
            raise ConfigError(
                f"AllocatorOptions.mmap_threshold must be in 1..{_MAX_MMAP_THRESHOLD} bytes "
                f"(got mmap_threshold={self.mmap_threshold!r})"
            )
        if self.trim_threshold < 0:
            raise ConfigError(f"AllocatorOptions.trim_threshold must be >= 0 (got {self.trim_threshold!r})")


DOCUMENTED_OPTIONS.append(AllocatorOptions)

_tuned_pid = -1
_last_result = False


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl, macOS: no glibc malloc to tune
    return libc


def _user_configured_malloc() -> bool:
    if any(name in os.environ for name in _USER_VARIABLES):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def tune_allocator(options: AllocatorOptions | None = None) -> bool:
    """Apply :class:`AllocatorOptions` to this process's malloc, once per process.

    Returns whether the settings are in effect in this process (False on another C library,
    with ``tune=False``, or when malloc's own environment variables are set). Later calls in
    the same process return the first call's answer without changing anything.
    """
    global _tuned_pid, _last_result
    if _tuned_pid == os.getpid():
        return _last_result
    options = AllocatorOptions.from_env() if options is None else options
    applied = False
    if options.tune and not _user_configured_malloc():
        libc = _glibc()
        if libc is not None:
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, options.mmap_threshold)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, options.trim_threshold)
            )
    _tuned_pid, _last_result = os.getpid(), applied
    return applied


__all__ = ["AllocatorOptions", "tune_allocator"]
