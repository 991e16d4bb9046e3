"""The metadata cache on disk: where it lives, one file format for arrays, atomic writes, locks.

A cache file holds named numpy arrays and a small JSON header. Every array starts at a
64-byte-aligned offset, so a process maps the whole file read-only with one ``mmap`` and
gets zero-copy, read-only arrays: processes that map the same file share its pages in the
page cache (one copy in memory however many workers or ranks hold it).

Layout: ``MAGIC`` (8 bytes), format version (uint32 LE), header length (uint32 LE), the
header (UTF-8 JSON: ``token``, ``meta``, and per array its dtype, shape and offset from the
start of the data area), zero padding to 64 bytes, then the arrays. A file is written to a
temporary name in its directory and renamed into place, so a reader sees the old file or
the new one, never a partial one; a truncated or foreign file reads as a miss.

>>> import tempfile, numpy as np
>>> path = tempfile.mkdtemp() + "/x.s3dc"
>>> token = write_arrays(path, {"a": np.arange(3)}, {"what": "demo"})
>>> f = open_arrays(path)
>>> f.meta["what"], f.arrays["a"].tolist(), f.token == token
('demo', [0, 1, 2], True)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"S3DLMETA"
FILE_VERSION = 1
ALIGN = 64
SUFFIX = ".s3dc"
_PREAMBLE = struct.Struct("<8sII")


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/s3dlio-loader``, or ``~/.cache/s3dlio-loader`` (XDG base directory rules)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3dlio-loader")


def cache_key(*parts: object) -> str:
    """A file-name-safe digest of ``parts`` (their ``repr``\\ s joined)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:40]


def new_token() -> str:
    """A fresh identifier for one version of a table or catalog."""
    return uuid.uuid4().hex


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_arrays(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                 token: str | None = None) -> str:
    """Write ``arrays`` and ``meta`` to ``path`` atomically; return the file's token.

    Arrays are stored in C order with their dtype (``dtype.str``; object and structured
    dtypes are refused). ``meta`` must be JSON-serializable.
    """
    token = token or new_token()
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    flat: list[tuple[int, np.ndarray]] = []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.hasobject or a.dtype.fields is not None:
            raise TypeError(f"cache array {name!r} has dtype {a.dtype}, which cannot be stored")
        offset = _align(offset)
        layout[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        flat.append((offset, a))
        offset += a.nbytes
    header = json.dumps({"token": token, "meta": dict(meta), "arrays": layout, "data_size": offset},
                        separators=(",", ":")).encode()  # fmt: skip
    data_start = _align(_PREAMBLE.size + len(header))
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREAMBLE.pack(MAGIC, FILE_VERSION, len(header)))
            f.write(header)
            pos = _PREAMBLE.size + len(header)
            for off, a in flat:
                target = data_start + off
                if target > pos:
                    f.write(b"\x00" * (target - pos))
                    pos = target
                if a.nbytes:
                    f.write(a.reshape(-1).view(np.uint8).data)
                    pos += a.nbytes
            end = data_start + offset
            if end > pos:
                f.write(b"\x00" * (end - pos))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return token


class MappedArrays:
    """A cache file mapped read-only: ``meta``, ``token`` and zero-copy ``arrays``.

    Opened with ``shared_lock=True``, the file carries a shared ``flock`` for as long as the
    mapping lives (while any of its arrays is referenced, in this process or in a forked
    child), which tells :func:`remove_unused` that a process still uses it.
    """

    def __init__(self, path: str, token: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.token = token
        self.meta = meta
        self.arrays = arrays


def open_arrays(path: str, *, shared_lock: bool = False) -> MappedArrays | None:
    """Map the cache file at ``path``; None when it is missing, truncated or not a cache file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("metadata cache: cannot open %s: %s", path, exc)
        return None
    try:
        if shared_lock:  # taken on the open file, which the mapping below keeps open (mmap dups the fd)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH)
        size = os.fstat(fd).st_size
        head = os.pread(fd, _PREAMBLE.size, 0)
        if len(head) < _PREAMBLE.size:
            return None
        magic, version, header_len = _PREAMBLE.unpack(head)
        if magic != MAGIC or version != FILE_VERSION:
            return None
        header = json.loads(os.pread(fd, header_len, _PREAMBLE.size))
        data_start = _align(_PREAMBLE.size + header_len)
        if size < data_start + int(header["data_size"]):
            log.debug("metadata cache: %s is truncated", path)
            return None
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        arrays: dict[str, np.ndarray] = {}
        for name, spec in header["arrays"].items():
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(d) for d in spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if count == 0:
                empty = np.empty(shape, dtype=dtype)
                empty.flags.writeable = False
                arrays[name] = empty
                continue
            arrays[name] = np.frombuffer(mm, dtype=dtype, count=count,
                                         offset=data_start + int(spec["offset"])).reshape(shape)  # fmt: skip
        return MappedArrays(path, str(header["token"]), dict(header["meta"]), arrays)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        log.debug("metadata cache: %s is not readable (%s); ignoring it", path, exc)
        return None
    finally:
        os.close(fd)


def read_meta(path: str) -> dict[str, Any] | None:
    """The ``meta`` of a cache file without mapping its arrays (None when unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE.size)
            if len(head) < _PREAMBLE.size:
                return None
            magic, version, header_len = _PREAMBLE.unpack(head)
            if magic != MAGIC or version != FILE_VERSION:
                return None
            meta: dict[str, Any] = json.loads(f.read(header_len))["meta"]
            return meta
    except (OSError, ValueError, KeyError):
        return None


#: Descriptors of the exclusive locks this process holds (closed in a forked child, see below).
_held_locks: set[int] = set()


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) across processes.

    Used so that one of several processes starting together lists a prefix or indexes a
    dataset while the others wait and then read its result. Where ``flock`` is not supported
    the block runs unlocked.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        _held_locks.add(fd)
        yield
    finally:
        _held_locks.discard(fd)
        os.close(fd)  # releases the lock


def _close_inherited_locks() -> None:
    # A child forked while another thread held a lock shares that lock's open file: keeping the
    # descriptor would hold the lock for as long as the child lives.
    for fd in list(_held_locks):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def remove_unused(directory: str, keep: str) -> None:
    """Delete the cache files of ``directory`` other than ``keep`` that no process holds.

    A process holding a file has it open with a shared lock (see :func:`open_arrays`); a
    file whose exclusive lock cannot be taken at once is left for a later clean-up.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.endswith(SUFFIX) or name == keep or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError:
            pass  # in use (or flock unsupported): keep it
        finally:
            os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
    """Replace the small text file ``path`` atomically."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = [
    "MappedArrays",
    "cache_key",
    "default_cache_dir",
    "exclusive_lock",
    "new_token",
    "open_arrays",
    "read_meta",
    "remove_unused",
    "write_arrays",
    "write_text_atomic",
]
