"""Shared-memory segments for the prefetch engine, and how batches are laid out in them.

Segments are files in ``/dev/shm`` created with ``O_EXCL`` under a name that starts with
the loader's own random prefix (``s3dlio-<uuid>-``), so two loaders, two users or two test
processes never collide, and everything a loader created — even by a worker that died
before it could say so — can be found and removed by that prefix. Python's
``multiprocessing.shared_memory`` is not used: on Python 3.11 its resource tracker unlinks
segments created by one process when that process exits, while the other side still uses
them.

A batch is written into a segment as a *layout*: a small picklable tree saying where each
array or bytes object sits; the consumer rebuilds the batch as numpy views over its own
mapping of the segment, without copying.
"""

from __future__ import annotations

import contextlib
import glob
import mmap
import os
import pickle
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..storage.store import LocalFiles

SHM_DIR = "/dev/shm"
ALIGN = 64


def new_prefix() -> str:
    """A fresh, collision-free name prefix for one loader's segments."""
    return f"s3dlio-{uuid.uuid4().hex}-"


def segment_path(name: str) -> str:
    """The /dev/shm path of segment ``name``."""
    return os.path.join(SHM_DIR, name)


def create_segment(name: str, size: int) -> mmap.mmap:
    """Create segment ``name`` of ``size`` bytes (fails if it exists) and map it read-write."""
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def map_segment(name: str) -> mmap.mmap:
    """Map an existing segment whole, read-write (the consumer's side).

    The mapping is writable so that arrays built on it are ordinary writable arrays
    (``torch.from_numpy`` warns on read-only ones); a slot belongs to the consumer while it
    holds a batch in it. The consumer maps each slot once and reuses the mapping for every
    batch written there: pages are faulted in once, not once per batch.
    """
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def unlink_segment(name: str) -> None:
    """Remove segment ``name`` (no error if it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_path(name))


def unlink_prefix(prefix: str) -> int:
    """Remove every segment whose name starts with ``prefix``; return how many."""
    count = 0
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            count += 1
    return count


# ----------------------------------------------------------------------------- layouts
#
# A layout is a tree of tuples:
#   ("array", offset, shape, dtype_str)   an ndarray stored at offset
#   ("bytes", offset, length)             a bytes-like object (delivered as a read-only memoryview)
#   ("dict", {key: layout})               ("list", [layout]) / ("tuple", [layout])
#   ("value", obj)                        a small picklable Python value carried in the message
#   ("pickle", offset, length)            anything else, pickled into the segment


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def measure(obj: Any) -> int:
    """Bytes of segment space :func:`write` needs for ``obj``."""
    if isinstance(obj, LocalFiles):
        return sum(_align(n) for n in obj.sizes)
    if isinstance(obj, Stack) or (isinstance(obj, np.ndarray) and obj.dtype.hasobject is False):
        return _align(obj.nbytes)
    if isinstance(obj, bytes | bytearray | memoryview):
        return _align(memoryview(obj).nbytes)
    if isinstance(obj, dict):
        return sum(measure(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(measure(v) for v in obj)
    if _is_small_value(obj):
        return 0
    return _align(len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)))


def write(obj: Any, buf: memoryview, offset: int = 0) -> tuple[Any, int]:
    """Copy ``obj`` into ``buf`` at ``offset``; return (layout, next free offset).

    :class:`~s3dlio_loader.storage.store.LocalFiles` are read into ``buf`` (a list of bytes).
    """
    if isinstance(obj, LocalFiles):
        parts, views = [], []
        for n in obj.sizes:
            views.append(buf[offset : offset + n])
            parts.append(("bytes", offset, n))
            offset += _align(n)
        obj.read_into(views)
        return ("list", parts), offset
    if isinstance(obj, Stack) or (isinstance(obj, np.ndarray) and obj.dtype.hasobject is False):
        n = obj.nbytes
        dst = np.ndarray(obj.shape, dtype=obj.dtype, buffer=buf, offset=offset)
        if isinstance(obj, Stack):
            np.stack(obj.arrays, out=dst)
        else:
            np.copyto(dst, obj, casting="no")
        return ("array", offset, obj.shape, obj.dtype.str if obj.dtype.fields is None else obj.dtype.descr), \
            offset + _align(n)
    if isinstance(obj, bytes | bytearray | memoryview):
        view = memoryview(obj).cast("B")
        buf[offset : offset + view.nbytes] = view
        return ("bytes", offset, view.nbytes), offset + _align(view.nbytes)
    if isinstance(obj, dict):
        items = {}
        for key, value in obj.items():
            items[key], offset = write(value, buf, offset)
        return ("dict", items), offset
    if isinstance(obj, list | tuple):
        parts = []
        for value in obj:
            layout, offset = write(value, buf, offset)
            parts.append(layout)
        return ("tuple" if isinstance(obj, tuple) else "list", parts), offset
    if _is_small_value(obj):
        return ("value", obj), offset
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf[offset : offset + len(data)] = data
    return ("pickle", offset, len(data)), offset + _align(len(data))


def read(layout: Any, buf: Any) -> Any:
    """Rebuild the object :func:`write` stored, as zero-copy views into ``buf`` (any writable
    buffer: a memoryview, an mmap, a ctypes array over one); the views keep ``buf`` alive."""
    kind = layout[0]
    if kind == "array":
        _, offset, shape, dtype = layout
        dt = np.dtype(dtype if isinstance(dtype, str) else [tuple(f) for f in dtype])
        return np.ndarray(shape, dtype=dt, buffer=buf, offset=offset)
    if kind == "bytes":
        _, offset, length = layout
        return memoryview(buf).cast("B")[offset : offset + length]  # unsigned bytes, whatever buf's format
    if kind == "dict":
        return {k: read(v, buf) for k, v in layout[1].items()}
    if kind == "list":
        return [read(v, buf) for v in layout[1]]
    if kind == "tuple":
        return tuple(read(v, buf) for v in layout[1])
    if kind == "value":
        return layout[1]
    if kind == "pickle":
        _, offset, length = layout
        return pickle.loads(memoryview(buf).cast("B")[offset : offset + length])
    raise ValueError(f"unknown layout kind {kind!r}")


def _is_small_value(obj: Any) -> bool:
    if obj is None or isinstance(obj, bool | int | float | complex | str | np.generic):
        return not isinstance(obj, str) or len(obj) < 4096
    return False


class Stack:
    """Arrays of one shape and dtype, to be stacked along a new first axis.

    Collation returns these instead of stacking at once, so that the worker stacks straight
    into shared memory (one copy) instead of stacking and then copying (two).
    """

    __slots__ = ("arrays", "dtype", "shape")

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = arrays
        self.shape = (len(arrays), *arrays[0].shape)
        self.dtype = arrays[0].dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def collate(samples: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch (see :func:`collate_lazy`), as plain numpy arrays."""
    return materialize(collate_lazy(samples))


def collate_lazy(samples: Sequence[Any]) -> Any:
    """Collate a list of samples, leaving array stacking to :func:`write` or :func:`materialize`.

    Arrays of one shape and dtype become one array with a leading batch axis; dicts (and
    tuples) are collated per key (per position); numbers become a numpy array; anything
    else (bytes, arrays of different shapes, tables...) stays a list of samples.
    """
    if not samples:
        return []
    first = samples[0]
    if isinstance(first, np.ndarray):
        if not first.dtype.hasobject and all(
            isinstance(s, np.ndarray) and s.shape == first.shape and s.dtype == first.dtype for s in samples
        ):
            return Stack(samples)
        return list(samples)
    if isinstance(first, dict):
        keys = first.keys()
        if all(isinstance(s, dict) and s.keys() == keys for s in samples):
            return {k: collate_lazy([s[k] for s in samples]) for k in keys}
        return list(samples)
    if isinstance(first, tuple) and all(isinstance(s, tuple) and len(s) == len(first) for s in samples):
        return tuple(collate_lazy([s[i] for s in samples]) for i in range(len(first)))
    if isinstance(first, bool | int | float | np.generic) and all(
        isinstance(s, bool | int | float | np.generic) for s in samples
    ):
        return np.asarray(samples)
    return list(samples)


def materialize(tree: Any) -> Any:
    """Replace every :class:`Stack` in ``tree`` by the stacked array."""
    if isinstance(tree, Stack):
        return np.stack(tree.arrays)
    if isinstance(tree, dict):
        return {k: materialize(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [materialize(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(materialize(v) for v in tree)
    return tree
