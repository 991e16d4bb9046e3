"""Buffers for checkpoint data: checksums, fresh memory, and taking over fetched bytes.

What was measured on the project's machine (2 cores, THP ``always`` with ``defrag=madvise``)
and shaped this module:

* Filling fresh memory is bound by page faults. ``np.empty`` advises huge pages
  (``MADV_HUGEPAGE``): a ``preadv`` into it ran at 5 GB/s in a fresh process, but at 1.3 GB/s
  (and whole loads took up to 3x longer) once the process had allocated and freed other large
  buffers, as a training process does: faults then wait for huge pages to be found and cleared.
  Plain ``malloc`` memory (what torch's allocator uses, so what ``torch.load`` fills) ran at a
  steady 1.8 GB/s, and loads built on it kept pace with ``torch.load``. :func:`empty`
  therefore uses ``malloc`` for large buffers. ``bytearray(n)`` zero-fills first (0.7 GB/s
  including the copy): :func:`staging_bytearray` allocates without initialising.
* CRC32C runs at 6-12 GB/s through the google-crc32c shared library, called with ctypes on
  the buffer's address (no copy, GIL released). Its Python wrapper only takes ``bytes``,
  which would force a copy of every tensor; zlib.crc32 runs at ~3.9 GB/s and blake2b at
  ~0.9 GB/s.
* A fetched object arrives as a fresh ``bytes`` that nobody else holds. Rather than copying
  it into a writable array (another ~0.2 s per GiB), :func:`adopt` makes a writable numpy
  view of its storage and keeps the ``bytes`` alive through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import weakref
from typing import Any, cast

import numpy as np

Buffer = bytes | bytearray | memoryview | np.ndarray

#: Below this size a fetched ``bytes`` is copied rather than adopted (copies are cheap there).
ADOPT_MIN_BYTES = 64 << 10


# ---------------------------------------------------------------------- CRC32C


def _load_crc32c() -> Any:
    """``crc32c_extend(crc, ptr, n)`` from google-crc32c's bundled shared library, or None."""
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - a hard dependency of the project
        return None
    base = os.path.dirname(os.path.dirname(os.path.abspath(google_crc32c.__file__)))
    candidates = sorted(glob.glob(os.path.join(base, "google_crc32c.libs", "libcrc32c*.so*")))
    candidates += sorted(glob.glob(os.path.join(os.path.dirname(google_crc32c.__file__), "libcrc32c*.so*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # CDLL calls release the GIL
            fn = lib.crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.argtypes = (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
        fn.restype = ctypes.c_uint32
        return fn
    return None


_crc32c_extend = _load_crc32c()


def byte_array(data: Buffer) -> np.ndarray:
    """A 1-D uint8 numpy view of any C-contiguous buffer (read-only buffers stay read-only)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``."""
    arr = byte_array(data)
    if arr.nbytes == 0:
        return crc
    if _crc32c_extend is not None:
        return int(_crc32c_extend(crc, arr.ctypes.data, arr.nbytes))
    import google_crc32c  # pragma: no cover - only without the shared library

    raw = data if isinstance(data, bytes) else arr.tobytes()  # pragma: no cover
    return int(google_crc32c.extend(crc, raw))  # pragma: no cover


# ---------------------------------------------------------------------- fresh memory

_libc: Any = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _libc = ctypes.CDLL(None, use_errno=True)
_MALLOC_MIN_BYTES = 1 << 20

_malloc: Any = None
_free: Any = None
if _libc is not None:
    with contextlib.suppress(AttributeError):
        _malloc, _free = _libc.malloc, _libc.free
        _malloc.restype, _malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
        _free.restype, _free.argtypes = None, (ctypes.c_void_p,)

_new_bytearray: Any = None
if sys.implementation.name == "cpython":
    with contextlib.suppress(AttributeError):
        _new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
        _new_bytearray.restype = ctypes.py_object
        _new_bytearray.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def staging_bytearray(size: int) -> bytearray:
    """A new ``bytearray`` of ``size`` bytes with undefined contents, to be filled at once.

    ``bytearray(size)`` zero-fills the memory first; this allocates without touching it
    (CPython; elsewhere it is ``bytearray(size)``).
    """
    if _new_bytearray is None or size < _MALLOC_MIN_BYTES:
        return bytearray(size)
    out: bytearray = _new_bytearray(None, size)
    return out


def empty(size: int) -> np.ndarray:
    """A new writable uint8 array of ``size`` bytes, contents undefined.

    Large ones come from ``malloc`` (freed when the last view of them goes), small ones
    from ``np.empty``; see the module docstring for why.
    """
    if _malloc is None or size < _MALLOC_MIN_BYTES:
        return np.empty(size, dtype=np.uint8)
    address = _malloc(size)
    if not address:
        raise MemoryError(f"cannot allocate {size} bytes")
    holder = (ctypes.c_ubyte * size).from_address(address)
    release = weakref.finalize(holder, _free, address)
    release.atexit = False  # arrays may outlive the finalizers run at exit; the OS reclaims it all
    return np.frombuffer(cast(Any, holder), dtype=np.uint8)


# ---------------------------------------------------------------------- taking over fetched bytes


def adopt(data: Buffer) -> np.ndarray:
    """A *writable* 1-D uint8 array holding ``data``, without a copy where that is safe.

    ``bytearray`` and writable arrays are viewed directly. A ``bytes`` object is taken over
    (viewed writable, kept alive by the view) only when the caller passes it as a temporary
    that nothing else references, e.g. ``adopt(store.get_range(...))``: its reference count
    proves nobody can observe the change. Anything else is copied once.
    """
    if isinstance(data, bytes):
        if (
            sys.implementation.name == "cpython"
            and len(data) >= ADOPT_MIN_BYTES
            and sys.getrefcount(data) <= 2  # this frame's argument + getrefcount's own
        ):
            address = byte_array(data).ctypes.data
            holder = (ctypes.c_char * len(data)).from_address(address)
            holder._owner = data  # type: ignore[attr-defined]  # keeps the bytes alive
            return np.frombuffer(cast(Any, holder), dtype=np.uint8)
        out = empty(len(data))
        out[:] = byte_array(data)
        return out
    arr = byte_array(data)
    if arr.flags.writeable:
        return arr
    out = empty(arr.nbytes)
    out[:] = arr
    return out


# ---------------------------------------------------------------------- local files


#: iovecs per preadv call (Linux IOV_MAX is 1024).
_IOV_MAX = 1024


def pread_into(fd: int, offset: int, buffers: list[np.ndarray]) -> int:
    """Fill ``buffers`` (writable uint8 arrays) from consecutive bytes at ``offset``.

    Returns the bytes read, which is less than asked only at end of file.
    """
    total = 0
    pending = [b.data for b in buffers if b.nbytes]
    while pending:
        batch = pending[:_IOV_MAX]
        want = sum(v.nbytes for v in batch)
        got = os.preadv(fd, batch, offset + total)
        total += got
        if got == 0:
            return total
        if got == want:
            pending = pending[len(batch):]
            continue
        # A short read: drop the buffers filled, keep the rest of the partial one.
        rest: list[memoryview] = []
        skip = got
        for view in pending:
            if skip >= view.nbytes:
                skip -= view.nbytes
                continue
            rest.append(view[skip:])
            skip = 0
        pending = rest
    return total


__all__ = [
    "ADOPT_MIN_BYTES",
    "adopt",
    "byte_array",
    "crc32c",
    "empty",
    "pread_into",
    "staging_bytearray",
]
