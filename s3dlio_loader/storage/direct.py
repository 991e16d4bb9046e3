"""The ``direct://`` filesystem: local files read and written with ``O_DIRECT``.

``direct:///abs/path`` names the local file ``/abs/path``. Data moves between the disk and
page-aligned memory without going through the kernel page cache, so a large training read
does not evict everything else from memory, and throughput is that of the device.

What callers need to know:

- :class:`DirectFileSystem` is an fsspec filesystem (``fsspec.filesystem("direct")``,
  ``fsspec.open("direct:///data/x.bin")``); listing, ``info``, ``rm``, ``mkdir``, ``mv``, copies
  and the other metadata operations are those of fsspec's ``LocalFileSystem`` (buffered, no
  ``O_DIRECT``). Reads (:meth:`~DirectFileSystem.cat_file`, :meth:`~DirectFileSystem.read_range`,
  :meth:`~DirectFileSystem.read_range_into`, ``open(path, "rb")``) and writes
  (:meth:`~DirectFileSystem.pipe_file`, ``open(path, "wb")``) use ``O_DIRECT``.
- Offsets and lengths need not be aligned: the aligned window covering the request is read into
  an aligned scratch buffer (one per thread, reused, at most ``chunk_size`` + ``alignment``
  bytes) and the requested bytes are copied out. When the destination given to
  :meth:`~DirectFileSystem.read_range_into` is itself aligned (an ``mmap``, a shared-memory
  segment, :func:`aligned_buffer`) and the offset is aligned, the data is read straight into it.
- Reads past the end of the file return fewer bytes (possibly none); they are not an error
  here. The :class:`~s3dlio_loader.storage.store.Store` decides whether a short range is one.
- Writes go through an aligned buffer in full aligned blocks; the unaligned tail is written at
  close as a zero-padded block, then the file is truncated to its true length with
  ``ftruncate`` (one file descriptor, no page-cache traffic for the tail). Bytes become visible
  in full blocks while writing and completely at ``close()``; ``flush()`` does not write a
  partial block. ``O_DIRECT`` does not imply durability: the data is on the device, not
  necessarily its metadata (no ``fsync`` is issued).
- When the filesystem refuses ``O_DIRECT`` (``EINVAL`` on open: tmpfs on some kernels,
  overlayfs, some network filesystems) a :class:`~s3dlio_loader.errors.DirectIOError` names the
  path. ``fallback=True`` is the explicit alternative: buffered I/O for such files, logged once
  per filesystem instance at INFO.
- Errors: a missing file raises :class:`~s3dlio_loader.errors.ObjectNotFoundError`, a denied
  one :class:`~s3dlio_loader.errors.AccessDeniedError`, a negative offset or length
  :class:`~s3dlio_loader.errors.InvalidRangeError`, other OS failures
  :class:`~s3dlio_loader.errors.StorageError`; all carry the ``direct://`` URI and the operation.

Importing this module registers the protocol with fsspec (:func:`register`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import logging
import mmap
import os
import stat
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile
from fsspec.utils import stringify_path

from ..errors import (
    AccessDeniedError,
    ConfigError,
    DirectIOError,
    InvalidRangeError,
    ObjectNotFoundError,
    StorageError,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "DEFAULT_ALIGNMENT",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "PROTOCOL",
    "DirectFileSystem",
    "DirectReadFile",
    "DirectWriteFile",
    "aligned_buffer",
    "register",
    "release_scratch",
]

logger = logging.getLogger(__name__)

PROTOCOL = "direct"
#: Alignment of file offsets, lengths and memory addresses for O_DIRECT. 512 is enough on most
#: disks; 4096 also covers 4K-native devices and is the portable default.
DEFAULT_ALIGNMENT = 4096
#: Largest single O_DIRECT request through the scratch buffer (and the write buffer size).
#: Bounds per-thread scratch memory; larger reads are done in several requests.
DEFAULT_CHUNK_SIZE = 8 << 20
#: Read-ahead block of ``open(path, "rb")`` file objects (fsspec ``block_size``).
DEFAULT_BLOCK_SIZE = 1 << 20
#: Largest request sent straight to/from caller memory in one system call (Linux caps one
#: read/write at just under 2 GiB).
_MAX_SYSCALL_BYTES = 1 << 30
_MIN_ALIGNMENT = 512

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_FILE_MODE = 0o666  # before umask, like open()


# --------------------------------------------------------------------------------------------
# Aligned memory
# --------------------------------------------------------------------------------------------


def _round_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _address(view: memoryview) -> int | None:
    """The address of a writable, C-contiguous byte view, or None (read-only, empty, strided)."""
    if view.nbytes == 0 or view.readonly or not view.c_contiguous:
        return None
    try:
        c = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError):
        return None
    address = ctypes.addressof(c)
    del c  # release the buffer export at once
    return address


_MAP_POPULATE: int = getattr(mmap, "MAP_POPULATE", 0)


class _AlignedBuffer:
    """``size`` writable bytes starting at a multiple of ``alignment``, in an anonymous mmap.

    ``populate=True`` pre-faults all pages at creation (``MAP_POPULATE``): one system call
    instead of a page fault per 4 KiB page on first use, for buffers that will be filled whole.
    """

    __slots__ = ("_mmap", "alignment", "size", "view")

    def __init__(self, size: int, alignment: int, *, populate: bool = False) -> None:
        # mmap memory is page-aligned; over-allocate only for alignments above the page size.
        extra = alignment if alignment > mmap.PAGESIZE else 0
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (_MAP_POPULATE if populate else 0)
        self._mmap = mmap.mmap(-1, max(size + extra, 1), flags=flags)
        whole = memoryview(self._mmap)
        base = _address(whole)
        assert base is not None
        start = (-base) % alignment
        self.view = whole[start : start + size]
        self.size = size
        self.alignment = alignment


def aligned_buffer(size: int, alignment: int = DEFAULT_ALIGNMENT) -> memoryview:
    """A new zero-filled writable buffer of ``size`` bytes whose address is ``alignment``-aligned.

    Pass it to :meth:`DirectFileSystem.read_range_into` at an aligned offset and the data is
    read from the disk straight into it, with no copy. The memory is an anonymous mmap, freed
    when the last view of it is dropped.
    """
    if size < 0:
        raise ConfigError(f"aligned_buffer size must be >= 0, got {size}")
    _check_alignment(alignment)
    return _AlignedBuffer(size, alignment, populate=True).view


# madvise(MADV_POPULATE_WRITE) (Linux >= 5.14) pre-faults a fresh destination in one call.
# Page faults are expensive under virtualisation (about 2.4 us per 4 KiB page measured on the
# project's VM, more than the copy itself): pre-faulting doubled read_range's throughput there.
_MADV_POPULATE_WRITE = 23
_POPULATE_MIN_BYTES = 64 << 10
#: From this size on, a result is pre-faulted by a helper thread, overlapping the disk reads.
_PREFAULT_THREAD_MIN_BYTES = 16 << 20
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    if _libc is not None:
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.madvise.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - no usable libc
    _libc = None


def _prefault(view: memoryview) -> None:
    """Best effort: map all whole pages of a fresh writable ``view`` (contents unchanged)."""
    if _libc is None or view.nbytes < _POPULATE_MIN_BYTES:
        return
    address = _address(view)
    if address is None:
        return
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + view.nbytes) // page * page
    if end > start:
        # Never changes the contents, so it may run while another thread fills the pages.
        _libc.madvise(start, end - start, _MADV_POPULATE_WRITE)  # failure (old kernel) is harmless


_tls = threading.local()


def _scratch(size: int, alignment: int) -> memoryview:
    """This thread's aligned scratch buffer, at least ``size`` bytes (grown as needed)."""
    buf: _AlignedBuffer | None = getattr(_tls, "scratch", None)
    if buf is None or buf.size < size or buf.alignment % alignment:
        buf = _AlignedBuffer(max(size, buf.size if buf is not None else 0), alignment, populate=True)
        _tls.scratch = buf
    return buf.view


def release_scratch() -> None:
    """Free the calling thread's scratch buffer (it is re-created on the next direct read/write).

    Each thread that reads or writes through this module keeps one buffer of up to
    ``chunk_size`` + ``alignment`` bytes; call this from a thread that is done with I/O to
    return that memory early (it is freed anyway when the thread ends).
    """
    _tls.scratch = None


def _check_alignment(alignment: int) -> None:
    if not isinstance(alignment, int) or alignment < _MIN_ALIGNMENT or alignment & (alignment - 1):
        raise ConfigError(f"alignment must be a power of two >= {_MIN_ALIGNMENT}, got {alignment!r}")


# --------------------------------------------------------------------------------------------
# Low-level aligned I/O on a file descriptor
# --------------------------------------------------------------------------------------------


def _pread_full(fd: int, view: memoryview, offset: int, alignment: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or the file ends; returns the count.

    A short read that stops on an aligned boundary is retried (it may be a partial transfer);
    an unaligned short count can only be the end of the file.
    """
    n = view.nbytes
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done : done + min(n - done, _MAX_SYSCALL_BYTES)]], offset + done)
        if got <= 0:
            break
        done += got
        if got % alignment:
            break
    return done


def _read_into_fd(fd: int, offset: int, out: memoryview, *, direct: bool, alignment: int, chunk_size: int) -> int:
    """Read up to ``out.nbytes`` bytes at ``offset`` into ``out``; fewer at the end of the file."""
    n = out.nbytes
    if n == 0:
        return 0
    if not direct:
        return _pread_full(fd, out, offset, 1)
    done = 0
    if offset % alignment == 0 and n >= alignment:
        address = _address(out)
        if address is not None and address % alignment == 0:
            # Zero copy: the aligned body goes straight from the disk into the caller's memory.
            body = n - n % alignment
            done = _pread_full(fd, out[:body], offset, alignment)
            if done < body:
                return done
    while done < n:
        pos = offset + done
        start = pos - pos % alignment
        head = pos - start
        want = n - done
        window = min(_round_up(head + want, alignment), chunk_size)
        scratch = _scratch(window, alignment)
        got = _pread_full(fd, scratch[:window], start, alignment)
        take = min(got - head, want)
        if take <= 0:
            break
        out[done : done + take] = scratch[head : head + take]
        done += take
        if got < window:
            break
    return done


def _write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` at the file position (looping over partial writes)."""
    done = 0
    n = view.nbytes
    while done < n:
        wrote = os.write(fd, view[done : done + min(n - done, _MAX_SYSCALL_BYTES)])
        if wrote <= 0:  # pragma: no cover - a regular file never accepts 0 bytes without an error
            raise OSError(errno.EIO, "write accepted no bytes")
        done += wrote


def _byte_view(data: ReadableBuffer) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class _AlignedWriter:
    """Sequential writer of an fd opened with O_DIRECT: full aligned blocks, padded tail at the end."""

    def __init__(self, fd: int, buffer: memoryview, *, direct: bool, alignment: int) -> None:
        self.fd = fd
        self.buffer = buffer  # aligned, length a multiple of alignment
        self.direct = direct
        self.alignment = alignment
        self.fill = 0
        self.written = 0  # logical bytes accepted so far

    def write(self, data: ReadableBuffer) -> int:
        src = _byte_view(data)
        n = src.nbytes
        i = 0
        cap = self.buffer.nbytes
        a = self.alignment
        while i < n:
            if self.fill == 0 and n - i >= a:
                address = _address(src[i:])
                if address is not None and address % a == 0:
                    # Zero copy: the caller's memory is aligned, write its aligned body directly.
                    body = (n - i) - (n - i) % a
                    _write_all(self.fd, src[i : i + body])
                    i += body
                    continue
            take = min(cap - self.fill, n - i)
            self.buffer[self.fill : self.fill + take] = src[i : i + take]
            self.fill += take
            i += take
            if self.fill == cap:
                _write_all(self.fd, self.buffer)
                self.fill = 0
        self.written += n
        return n

    def finish(self) -> int:
        """Write the buffered tail (zero-padded to a block, then truncated); returns the file size."""
        if self.fill:
            if self.direct:
                padded = _round_up(self.fill, self.alignment)
                self.buffer[self.fill : padded] = bytes(padded - self.fill)
                _write_all(self.fd, self.buffer[:padded])
                os.ftruncate(self.fd, self.written)
            else:
                _write_all(self.fd, self.buffer[: self.fill])
            self.fill = 0
        return self.written


# --------------------------------------------------------------------------------------------
# The filesystem
# --------------------------------------------------------------------------------------------


class DirectFileSystem(LocalFileSystem):
    """fsspec filesystem for ``direct://``: local files read and written with ``O_DIRECT``.

    Args:
        alignment: alignment in bytes of offsets, lengths and buffers of each O_DIRECT request;
            a power of two >= 512 (default 4096). It must be at least the device's logical
            block size, otherwise requests fail with :class:`DirectIOError`.
        fallback: when the filesystem refuses O_DIRECT for a file (EINVAL on open), use
            buffered I/O for it instead of raising :class:`DirectIOError` (logged once per
            instance at INFO). Default False: silently losing O_DIRECT is never the default.
        chunk_size: largest O_DIRECT request through the scratch buffer, and the default write
            buffer size; rounded up to a multiple of ``alignment`` (default 8 MiB).
        block_size: read-ahead block of ``open(path, "rb")`` file objects (default 1 MiB).
        auto_mkdir: create missing parent directories when opening a file for writing.
        **kwargs: passed to fsspec's ``AbstractFileSystem`` (e.g. ``skip_instance_cache``).
    """

    protocol = (PROTOCOL,)
    root_marker = "/"

    def __init__(
        self,
        alignment: int = DEFAULT_ALIGNMENT,
        fallback: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        block_size: int = DEFAULT_BLOCK_SIZE,
        auto_mkdir: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_alignment(alignment)
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ConfigError(f"chunk_size must be a positive number of bytes, got {chunk_size!r}")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ConfigError(f"block_size must be a positive number of bytes, got {block_size!r}")
        super().__init__(auto_mkdir=auto_mkdir, **kwargs)
        self.alignment = alignment
        self.fallback = bool(fallback)
        self.chunk_size = _round_up(chunk_size, alignment)
        self.blocksize = block_size
        self._fallback_logged = False

    # ---- paths ---------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        """``direct:///abs/path`` (or ``direct:/abs/path``, ``file:///abs/path``, a plain
        path) -> ``/abs/path``; relative paths are made absolute against the working directory."""
        path = stringify_path(path)
        if isinstance(path, str):
            for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}:", "file://", "local://"):
                if path.startswith(prefix):
                    path = path[len(prefix) :]
                    break
        result: str = super()._strip_protocol(path)
        return result

    def _uri(self, path: str) -> str:
        return f"{PROTOCOL}://{path}"

    # ---- opening -------------------------------------------------------------------------

    def _refused(self, path: str, op: str, exc: OSError | None) -> DirectIOError:
        if exc is None:
            why = "O_DIRECT is not available on this platform"
        else:
            why = "O_DIRECT is not supported by the filesystem holding this path (EINVAL on open)"
        return DirectIOError(
            f"{why}; pass fallback=True to DirectFileSystem (storage option) to use buffered I/O "
            "explicitly, or use a file:// URI",
            uri=self._uri(path),
            op=op,
        )

    def _note_fallback(self, path: str) -> None:
        if not self._fallback_logged:
            self._fallback_logged = True
            logger.info(
                "O_DIRECT is not supported for %s; using buffered I/O because fallback=True "
                "(logged once per filesystem)",
                path,
            )

    def _map_os_error(self, exc: OSError, path: str, op: str) -> StorageError:
        uri = self._uri(path)
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError("no such file or directory", uri=uri, op=op)
        if isinstance(exc, PermissionError):
            return AccessDeniedError(f"permission denied ({exc.strerror})", uri=uri, op=op)
        if isinstance(exc, IsADirectoryError):
            return StorageError("is a directory, not a file", uri=uri, op=op)
        if exc.errno == errno.EINVAL:
            return DirectIOError(
                f"O_DIRECT request refused (EINVAL): the device's logical block size may exceed "
                f"alignment={self.alignment}",
                uri=uri,
                op=op,
            )
        return StorageError(f"{exc.strerror or exc} (errno {exc.errno})", uri=uri, op=op)

    def _open_fd(self, path: str, flags: int, op: str) -> tuple[int, bool]:
        """Open ``path`` with ``flags | O_DIRECT``; returns ``(fd, is_direct)``.

        EINVAL on open means the filesystem refuses O_DIRECT (or ``path`` is a directory).
        """
        flags |= _O_CLOEXEC
        if _O_DIRECT:
            try:
                return os.open(path, flags | _O_DIRECT, _FILE_MODE), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise self._map_os_error(exc, path, op) from exc
                if os.path.isdir(path):
                    raise StorageError("is a directory, not a file", uri=self._uri(path), op=op) from exc
                if not self.fallback:
                    raise self._refused(path, op, exc) from exc
                refusal: OSError | None = exc
        else:
            if not self.fallback:
                raise self._refused(path, op, None)
            refusal = None
        self._note_fallback(path)
        try:
            try:
                return os.open(path, flags, _FILE_MODE), False
            except FileExistsError:
                if refusal is None or not flags & os.O_EXCL:
                    raise
                # O_CREAT|O_EXCL|O_DIRECT may have created the file before the EINVAL: it is ours.
                return os.open(path, (flags & ~(os.O_CREAT | os.O_EXCL)) | os.O_TRUNC, _FILE_MODE), False
        except OSError as exc:
            raise self._map_os_error(exc, path, op) from exc

    def _open_read_fd(self, path: str, op: str) -> tuple[int, bool]:
        return self._open_fd(path, os.O_RDONLY, op)

    def _open_write_fd(self, path: str, exclusive: bool, op: str) -> tuple[int, bool]:
        if self.auto_mkdir:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        return self._open_fd(path, flags, op)

    # ---- reads ---------------------------------------------------------------------------

    def read_range_into(self, path: str, offset: int, buffer: WriteableBuffer) -> int:
        """Read ``len(buffer)`` bytes of ``path`` starting at ``offset`` into ``buffer``.

        ``buffer`` is any writable C-contiguous buffer (bytearray, memoryview, mmap, numpy
        array, shared memory); its byte length is the requested length. Returns the number of
        bytes read, which is smaller when the range runs past the end of the file (0 when
        ``offset`` is at or past the end); the bytes of ``buffer`` beyond that are untouched.
        If ``buffer`` is aligned (see :func:`aligned_buffer`) and ``offset`` is a multiple of
        ``alignment``, the data is read from the disk straight into it without a copy.

        Raises:
            InvalidRangeError: ``offset`` is negative.
            ObjectNotFoundError, AccessDeniedError, DirectIOError, StorageError: see the module doc.
        """
        path = self._strip_protocol(path)
        out = _byte_view(buffer)
        if offset < 0:
            raise InvalidRangeError(f"negative offset {offset}", uri=self._uri(path), op="get_range")
        fd, direct = self._open_read_fd(path, "get_range")
        try:
            return _read_into_fd(fd, offset, out, direct=direct, alignment=self.alignment, chunk_size=self.chunk_size)
        except OSError as exc:
            raise self._map_os_error(exc, path, "get_range") from exc
        finally:
            os.close(fd)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """The bytes ``[offset, offset + length)`` of ``path``.

        The result is shorter than ``length`` when the range runs past the end of the file
        (empty when ``offset`` is at or past the end): deciding whether that is an error is the
        caller's business. ``length`` 0 gives ``b""``.

        Raises:
            InvalidRangeError: ``offset`` or ``length`` is negative.
            ObjectNotFoundError, AccessDeniedError, DirectIOError, StorageError: see the module doc.
        """
        path = self._strip_protocol(path)
        if offset < 0 or length < 0:
            raise InvalidRangeError(
                f"negative offset or length (offset={offset}, length={length})",
                uri=self._uri(path),
                op="get_range",
            )
        return self._read_bytes(path, offset, offset + length, "get_range")

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """The bytes of ``path`` from ``start`` to ``end`` (fsspec semantics: None means the
        start/end of the file, negative values count from the end; the range is clipped to the
        file, an empty or inverted range gives ``b""``)."""
        path = self._strip_protocol(path)
        op = "get" if start is None and end is None else "get_range"
        return self._read_bytes(path, start, end, op)

    def _read_bytes(self, path: str, start: int | None, end: int | None, op: str) -> bytes:
        fd, direct = self._open_read_fd(path, op)
        try:
            size = os.fstat(fd).st_size
            begin = 0 if start is None else (start if start >= 0 else max(0, size + start))
            stop = size if end is None else (end if end >= 0 else size + end)
            stop = min(stop, size)
            n = stop - begin
            if n <= 0:
                return b""
            if not direct:
                data = os.pread(fd, n, begin)
                if len(data) < n:  # pragma: no cover - short only if the file shrank meanwhile
                    rest = bytearray(n - len(data))
                    got = _pread_full(fd, memoryview(rest), begin + len(data), 1)
                    data += bytes(rest[:got])
                return data
            result, view = _new_bytes(n)
            helper = None
            if n >= _PREFAULT_THREAD_MIN_BYTES:
                # Map the result's pages on another core while this one waits for the disk.
                helper = threading.Thread(target=_prefault, args=(view,), name="direct-prefault")
                helper.start()
            else:
                _prefault(view)
            try:
                got = _read_into_fd(fd, begin, view, direct=True, alignment=self.alignment, chunk_size=self.chunk_size)
            finally:
                if helper is not None:
                    helper.join()
            del view
            # Shorter only if the file shrank after fstat.
            return result if got == n else result[:got]
        except OSError as exc:
            raise self._map_os_error(exc, path, op) from exc
        finally:
            os.close(fd)

    # ---- writes --------------------------------------------------------------------------

    def pipe_file(self, path: str, value: ReadableBuffer, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` (bytes, bytearray, memoryview, any C-contiguous buffer) as the whole
        content of ``path`` with O_DIRECT. ``mode="create"`` fails with ``FileExistsError``-like
        :class:`StorageError` if the file exists (atomic ``O_EXCL``). The caller's data is copied
        once, into this thread's aligned scratch buffer (not at all when it is itself aligned)."""
        path = self._strip_protocol(path)
        if mode not in ("overwrite", "create"):
            raise ConfigError(f"pipe_file mode must be 'overwrite' or 'create', got {mode!r}")
        src = _byte_view(value)
        fd, direct = self._open_write_fd(path, exclusive=mode == "create", op="put")
        try:
            size = min(self.chunk_size, _round_up(max(src.nbytes, 1), self.alignment))
            writer = _AlignedWriter(fd, _scratch(size, self.alignment)[:size], direct=direct, alignment=self.alignment)
            writer.write(src)
            writer.finish()
        except OSError as exc:
            raise self._map_os_error(exc, path, "put") from exc
        finally:
            os.close(fd)
        self.invalidate_cache(path)

    # ---- file objects --------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DirectReadFile | DirectWriteFile:
        path = self._strip_protocol(path)
        if mode == "rb":
            size = kwargs.pop("size", None)
            if size is None:
                size = self._regular_file_size(path, "open")
            return DirectReadFile(
                self,
                path,
                mode,
                block_size=block_size or self.blocksize,
                autocommit=autocommit,
                cache_options=cache_options,
                size=size,
                **kwargs,
            )
        if mode in ("wb", "xb"):
            return DirectWriteFile(self, path, mode, block_size=block_size, autocommit=autocommit)
        raise ConfigError(f"direct:// files can be opened with mode 'rb', 'wb' or 'xb', not {mode!r}")

    def _regular_file_size(self, path: str, op: str) -> int:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise self._map_os_error(exc, path, op) from exc
        if stat.S_ISDIR(st.st_mode):
            raise StorageError("is a directory, not a file", uri=self._uri(path), op=op)
        return st.st_size


def _new_bytes(n: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` object of length ``n`` and a writable view of its storage.

    This is ``PyBytes_FromStringAndSize(NULL, n)``: the C API's way to build a bytes object by
    filling it before anyone else sees it. It saves the second copy that filling a bytearray and
    converting it to bytes would cost. The view must be dropped before the bytes are shared.
    """
    result: bytes = _PyBytes_FromStringAndSize(None, n)
    address = _PyBytes_AsString(result)
    view = memoryview((ctypes.c_char * n).from_address(address)).cast("B")
    return result, view


_PyBytes_FromStringAndSize = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_FromStringAndSize.restype = ctypes.py_object
_PyBytes_FromStringAndSize.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
_PyBytes_AsString = ctypes.pythonapi.PyBytes_AsString
_PyBytes_AsString.restype = ctypes.c_void_p
_PyBytes_AsString.argtypes = (ctypes.py_object,)


class DirectReadFile(AbstractBufferedFile):
    """A readable, seekable binary file over :meth:`DirectFileSystem.read_range`.

    An fsspec buffered file (read-ahead cache of ``block_size`` bytes by default; pass
    ``cache_type="none"`` for no cache). Every cache miss is one O_DIRECT read; it keeps no
    file descriptor open between reads, so it can be pickled and used after fork.
    ``readinto`` of at least ``block_size`` bytes reads straight into the given buffer.
    """

    fs: DirectFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.read_range(self.path, start, max(0, end - start))

    def readinto(self, b: WriteableBuffer) -> int:
        out = _byte_view(b)
        if self.mode != "rb" or self.closed or out.nbytes < self.blocksize:
            result: int = super().readinto(out)
            return result
        n = min(out.nbytes, self.size - self.loc)
        if n <= 0:
            return 0
        got = self.fs.read_range_into(self.path, self.loc, out[:n])
        self.loc += got
        return got


class DirectWriteFile(io.RawIOBase):
    """A write-only binary file that writes with O_DIRECT (``DirectFileSystem.open(path, "wb")``).

    Data is gathered in an aligned buffer of ``block_size`` bytes (default ``chunk_size``) and
    written in full aligned blocks as it fills; data from an aligned source is written without
    a copy. At ``close()`` the tail is written as a zero-padded block and the file truncated to
    its true length. ``flush()`` writes nothing (a partial block cannot be written with O_DIRECT):
    the file is complete only after ``close()`` (or leaving a ``with`` block, even on error).
    Mode ``"xb"`` fails if the file exists. With ``autocommit=False`` (fsspec transactions) the
    data goes to a temporary file beside ``path``, moved into place by :meth:`commit`.
    """

    def __init__(
        self,
        fs: DirectFileSystem,
        path: str,
        mode: str = "wb",
        *,
        block_size: int | None = None,
        autocommit: bool = True,
    ) -> None:
        self._fd = -1  # first, so that close() from __del__ works whatever fails below
        super().__init__()
        if mode not in ("wb", "xb"):
            raise ConfigError(f"DirectWriteFile mode must be 'wb' or 'xb', got {mode!r}")
        self.fs = fs
        self.path = path
        self.mode = mode
        self.autocommit = autocommit
        self._target = path
        if not autocommit:
            head, tail = os.path.split(path)
            self._target = os.path.join(head, f".{tail}.direct-tmp-{uuid.uuid4().hex}")
            if mode == "xb" and os.path.lexists(path):
                raise StorageError("file exists", uri=fs._uri(path), op="put")
        buffer = _AlignedBuffer(_round_up(block_size or fs.chunk_size, fs.alignment), fs.alignment).view
        self._fd, self._direct = fs._open_write_fd(self._target, exclusive=mode == "xb", op="put")
        self._writer = _AlignedWriter(self._fd, buffer, direct=self._direct, alignment=fs.alignment)

    @property
    def direct(self) -> bool:
        """True when the file is written with O_DIRECT (False only in ``fallback`` mode)."""
        return self._direct

    def writable(self) -> bool:
        return not self.closed

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        """Bytes written so far."""
        return self._writer.written

    def write(self, data: ReadableBuffer) -> int:
        """Append ``data`` (any C-contiguous buffer); returns its length in bytes."""
        if self.closed:
            raise ValueError("write to a closed file")
        try:
            return self._writer.write(data)
        except OSError as exc:
            raise self.fs._map_os_error(exc, self.path, "put") from exc

    def flush(self) -> None:
        """No-op beyond the checks of ``io``: full blocks are already written, the tail at close."""
        super().flush()

    def close(self) -> None:
        """Write the tail, truncate to the true length and close (idempotent)."""
        if self.closed:
            return
        try:
            if getattr(self, "_fd", -1) >= 0:
                try:
                    self._writer.finish()
                except OSError as exc:
                    raise self.fs._map_os_error(exc, self.path, "put") from exc
                finally:
                    os.close(self._fd)
                    self._fd = -1
                self.fs.invalidate_cache(self.path)
        finally:
            super().close()

    def commit(self) -> None:
        """Move the temporary file into place (fsspec transactions, ``autocommit=False``)."""
        if self.autocommit:
            raise RuntimeError("commit() is only for files opened with autocommit=False")
        self.close()
        os.replace(self._target, self.path)

    def discard(self) -> None:
        """Drop the temporary file (fsspec transactions, ``autocommit=False``)."""
        if self.autocommit:
            raise RuntimeError("discard() is only for files opened with autocommit=False")
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._target)

    def __repr__(self) -> str:
        return f"<DirectWriteFile {self.fs._uri(self.path)} mode={self.mode!r}>"


def register() -> None:
    """Register :class:`DirectFileSystem` with fsspec for ``direct://`` (idempotent).

    Called when this module is imported; after that ``fsspec.filesystem("direct")`` and
    ``fsspec.open("direct:///path")`` work.
    """
    if fsspec.registry.get(PROTOCOL) is not DirectFileSystem:
        fsspec.register_implementation(PROTOCOL, DirectFileSystem, clobber=True)


register()
