"""File objects over any URI, for users who keep their own format (``torch.save`` / ``torch.load``).

>>> import tempfile, os
>>> uri = os.path.join(tempfile.mkdtemp(), "blob.bin")
>>> with open_checkpoint_writer(uri) as f:
...     _ = f.write(b"hello world")
>>> with open_checkpoint_reader(uri) as f:
...     _ = f.seek(6)
...     f.read()
b'world'

With PyTorch::

    with open_checkpoint_writer("s3://bucket/run1/model.pt", storage_options) as f:
        torch.save(model.state_dict(), f)
    with open_checkpoint_reader("s3://bucket/run1/model.pt", storage_options) as f:
        state = torch.load(f, weights_only=True)

The writer streams: object stores get a multipart upload of ``StoreOptions.writer_part_size``
parts, local files are written aside and renamed into place, so memory stays bounded and
a save that fails (or is never closed) leaves no object. The reader is seekable (``torch.load``
jumps to the zip directory at the end, then reads each record): it fetches aligned windows
of ``readahead`` bytes with range requests, keeps a few of them, fetches every window of a
large read concurrently and prefetches the next windows while reads move forward.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, BinaryIO

from ..errors import ConfigError
from ..storage import ObjectWriter, Store, parse_uri
from .options import CheckpointOptions

log = logging.getLogger(__name__)


def _store_for(uri: str, storage_options: Mapping[str, Any] | None, store: Store | None) -> Store:
    if store is None:
        return Store.from_uri(uri, storage_options)
    if store.scheme != parse_uri(uri).scheme:
        raise ConfigError(f"the store serves {store.scheme}:// but the URI is {uri}")
    return store


# ``BinaryIO`` is a second base only for type checkers: with it, ``torch.save(obj, f)`` and
# ``torch.load(f)`` accept these files (typeshed types their argument ``IO[bytes]``). ``io.RawIOBase``
# comes first in the MRO, so all behaviour is its own and this module's.


class CheckpointWriter(io.RawIOBase, BinaryIO):
    """A write-only, non-seekable binary file that becomes the object ``uri`` on :meth:`close`.

    Leaving a ``with`` block by an exception, calling :meth:`abort`, or dropping the object
    without closing it discards everything: no partial object is ever created.
    """

    def __init__(self, store: Store, uri: str, *, fsync: bool = True) -> None:
        super().__init__()
        self.uri = uri
        self._store = store
        self._fsync = fsync
        self._position = 0
        self._writer: ObjectWriter | None = store.open_writer(uri)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Bytes written so far."""
        return self._position

    def write(self, data: Any) -> int:
        if self._writer is None:
            raise ValueError("write to a closed checkpoint writer")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._writer.write(view)
        self._position += view.nbytes
        return view.nbytes

    def close(self) -> None:
        """Finish the upload and make the object visible."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            scheme, path = parse_uri(self.uri)
            if self._fsync and scheme in ("file", "direct"):
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        super().close()

    def abort(self) -> None:
        """Discard everything written; no object is created."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        super().close()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_writer", None) is not None:
            log.warning("checkpoint writer for %s dropped without close(): nothing was written", self.uri)
            with contextlib.suppress(Exception):
                self.abort()


class CheckpointReader(io.RawIOBase, BinaryIO):
    """A read-only, seekable binary file over range requests (see the module docstring)."""

    def __init__(self, store: Store, uri: str, *, size: int | None = None, readahead: int = 16 << 20,
                 max_in_flight: int = 4, prefetch: int = 2) -> None:
        super().__init__()
        if readahead < 1 or max_in_flight < 1 or prefetch < 0:
            raise ConfigError(
                f"readahead and max_in_flight must be >= 1 and prefetch >= 0 "
                f"(got readahead={readahead!r}, max_in_flight={max_in_flight!r}, prefetch={prefetch!r})"
            )
        self.uri = uri
        self._store = store
        self._size = store.stat(uri).size if size is None else size
        self._window = readahead
        self._prefetch = prefetch
        self._max_in_flight = max_in_flight
        self._position = 0
        self._last_end = -1
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._capacity = max(4, max_in_flight + prefetch + 2)
        self._inflight: dict[int, cf.Future[bytes]] = {}
        self._pool: cf.ThreadPoolExecutor | None = None

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek on a closed checkpoint reader")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r}")
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    # -- windows

    def _fetch(self, index: int) -> cf.Future[bytes]:
        future = self._inflight.get(index)
        if future is None:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(max_workers=self._max_in_flight, thread_name_prefix="s3dlio-ckptr")
            start = index * self._window
            length = min(self._window, self._size - start)
            future = self._pool.submit(self._store.get_range, self.uri, start, length)
            self._inflight[index] = future
        return future

    def _get(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is not None:
            self._cache.move_to_end(index)
            return data
        future = self._fetch(index)
        try:
            data = future.result()
        finally:
            self._inflight.pop(index, None)
        self._cache[index] = data
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return data

    def _views(self, start: int, length: int) -> list[memoryview]:
        """Views of the bytes ``[start, start + length)`` (fetching the windows concurrently)."""
        first, last = start // self._window, (start + length - 1) // self._window
        for index in range(first, last + 1):
            if index not in self._cache:
                self._fetch(index)
        if start == self._last_end or start == 0:  # moving forward: fetch ahead
            final = (self._size - 1) // self._window
            for index in range(last + 1, min(last + self._prefetch, final) + 1):
                if index not in self._cache:
                    self._fetch(index)
        views = []
        for index in range(first, last + 1):
            data = memoryview(self._get(index))
            base = index * self._window
            lo = max(start, base) - base
            hi = min(start + length, base + len(data)) - base
            views.append(data[lo:hi])
        self._last_end = start + length
        return views

    # -- reads

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed checkpoint reader")
        out = memoryview(buffer).cast("B")
        length = min(out.nbytes, self._size - self._position)
        if length <= 0:
            return 0
        position = 0
        for view in self._views(self._position, length):
            out[position : position + view.nbytes] = view
            position += view.nbytes
        self._position += length
        return length

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed checkpoint reader")
        if size is None or size < 0:
            size = self._size - self._position
        length = min(size, self._size - self._position)
        if length <= 0:
            return b""
        views = self._views(self._position, length)
        self._position += length
        return views[0].tobytes() if len(views) == 1 else b"".join(views)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        for future in self._inflight.values():
            future.cancel()
        self._inflight.clear()
        self._cache.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def open_checkpoint_writer(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    fsync: bool = True,
) -> CheckpointWriter:
    """A binary file that streams to the object ``uri`` (see :class:`CheckpointWriter`).

    ``fsync`` (file:// and direct://) flushes the file to the disk on close.
    """
    return CheckpointWriter(_store_for(uri, storage_options, store), uri, fsync=fsync)


def open_checkpoint_reader(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    readahead: int | None = None,
    max_in_flight: int | None = None,
) -> CheckpointReader:
    """A seekable binary file over the object ``uri`` (see :class:`CheckpointReader`).

    ``readahead`` (default ``CheckpointOptions.readahead``, 16 MiB) is the size of one range
    request. On moto every range request costs the server a read of the whole object: use a
    window as large as the object there.
    """
    options = CheckpointOptions.from_env()
    return CheckpointReader(
        _store_for(uri, storage_options, store),
        uri,
        readahead=readahead or options.readahead,
        max_in_flight=max_in_flight or options.max_in_flight,
    )


__all__ = ["CheckpointReader", "CheckpointWriter", "open_checkpoint_reader", "open_checkpoint_writer"]
