"""TFRecord: framed records (optionally ``tf.train.Example``), with random access by record number.

Each record is framed as TensorFlow writes it::

    uint64 length (little endian) | uint32 masked CRC32C of those 8 bytes | data | uint32 masked CRC32C of data

where ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``. CRC32C comes from
``google_crc32c``'s C implementation (measured here: about 0.08 ms per MB, 12 GB/s, plus about
0.2 us per record for the call), so verification costs little next to the read; the length CRCs of
many records are computed in numpy. ``verify_crc=False`` skips both checks.

**Index.** ``build_index`` makes one pass over the object: one ``get`` when it is at most
``scan_chunk`` bytes (16 MiB by default), else range reads of ``scan_chunk`` bytes with
``scan_ahead`` (4) in flight, walking the length headers; the length CRCs are then checked
together, vectorised with numpy. It never makes one request per record (a chunk wholly inside one
huge record is fetched only if it was already requested ahead). The index (:class:`TFRecordIndex`)
holds each record's offset and data length as int64 arrays. A DALI-style text index (``"<offset> <size>\\n"`` per
record, size = the whole framed record, as written by DALI's ``tfrecord2idx`` and s3dlio's
``create_tfrecord_index``) can be written with :func:`write_index` and used instead of the scan
with ``TFRecordReader(uri, index_uri=...)``.

**Reads.** ``reader[i]`` is one range request of the framed record (so both CRCs are checked);
``read_batch`` fetches the records of a batch with coalesced range requests (ranges closer than
the Store's ``coalesce_gap`` share one request) and checks their framing in numpy: the Python
work per record is a slice and one CRC call.

**GZIP/ZLIB.** TensorFlow compresses a whole file as one stream, so a record cannot be reached
without decompressing everything before it. The reader therefore decompresses the object once,
streaming (same requests as the scan), indexes the decompressed stream and **keeps the
decompressed bytes in memory** for the reader's lifetime: memory cost = the decompressed size
(plus a transient second copy while it is assembled), in each process that reads from it. The
cache is not pickled: a worker process decompresses again on its first read. Offsets of a
compressed file's index (and of its index file) are positions in the decompressed stream.

>>> import tempfile
>>> from s3dlio_loader.storage import Store
>>> from s3dlio_loader.formats.tfrecord import TFRecordReader, write_tfrecord
>>> uri = f"file://{tempfile.mkdtemp()}/a.tfrecord"
>>> write_tfrecord(uri, [b"first", {"label": 7}], store=Store.from_uri(uri))
>>> r = TFRecordReader(uri)
>>> len(r), r[0]
(2, b'first')
>>> TFRecordReader(uri, features={"label": ("int64", ())})[1]
{'label': np.int64(7)}
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import google_crc32c
import numpy as np

from ..errors import ConfigError, FormatError
from ..storage import ObjectInfo, Store, parse_uri, store_for
from .base import FormatIndex, OnError, Reader, check_indices
from .example import compile_features, decode_example, encode_example

log = logging.getLogger(__name__)

FORMAT = "tfrecord"
MiB = 1 << 20
#: Bytes before a record's data: uint64 length + uint32 masked CRC of the length.
HEADER_SIZE = 12
#: Bytes after a record's data: uint32 masked CRC of the data.
FOOTER_SIZE = 4
#: Framing bytes per record.
OVERHEAD = HEADER_SIZE + FOOTER_SIZE
#: Default size of each range request of an index scan (and of a compressed object's download).
#: Kept below glibc's 32 MiB mmap threshold: a larger buffer is a fresh mapping on every read,
#: page-faulted in at about 1 GB/s on file://, against 10+ GB/s for reused heap memory.
SCAN_CHUNK = 16 * MiB
#: Default number of scan range requests in flight.
SCAN_AHEAD = 4
#: ``read_batch`` splits its coalesced requests at about this size (concurrent requests, and
#: buffers below glibc's mmap threshold, see SCAN_CHUNK).
READ_BLOCK = 16 * MiB
#: Block requests of one ``read_batch`` in flight at once.
READ_THREADS = 8
#: Records are read ``ITER_BYTES`` at a time when a reader is iterated.
ITER_BYTES = 8 * MiB
#: The writer hands the store pieces of about this many bytes.
WRITE_BUFFER = 4 * MiB
#: True when google_crc32c uses its C implementation (its pure-Python fallback is far slower).
CRC32C_ACCELERATED = google_crc32c.implementation == "c"

_MASK_DELTA = 0xA282EAD8
_CASTAGNOLI = 0x82F63B78  # CRC32C polynomial, bit-reversed
_CHECK_SLICE = 1 << 16  # headers checked per numpy step (bounds temporary arrays)
_VECTOR_MIN = 8  # records of one buffer from which the numpy framing check beats the per-record one
_HEADER = struct.Struct("<QI")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_crc32c = google_crc32c.value
_WBITS = {"GZIP": 16 + zlib.MAX_WBITS, "ZLIB": zlib.MAX_WBITS}

Compression = Literal["", "GZIP", "ZLIB"]
Decode = Literal["example"] | Callable[[bytes], Any] | None


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``.

    >>> hex(masked_crc32c(b""))
    '0xa282ead8'
    """
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord record (header, data, CRC)."""
    length = _U64.pack(len(data))
    return b"".join((length, _U32.pack(masked_crc32c(length)), data, _U32.pack(masked_crc32c(data))))


def resolve_compression(uri: str, compression: str | None) -> Compression:
    """``"GZIP"``, ``"ZLIB"`` or ``""`` (none).

    None infers it from the extension (``.gz`` -> GZIP, ``.zlib`` -> ZLIB, else none); ``""``
    or ``"NONE"`` means uncompressed whatever the name. Case-insensitive, as TensorFlow's
    ``compression_type``.
    """
    if compression is None:
        lowered = uri.lower()
        if lowered.endswith((".gz", ".gzip")):
            return "GZIP"
        if lowered.endswith(".zlib"):
            return "ZLIB"
        return ""
    if not isinstance(compression, str) or compression.upper() not in ("", "NONE", "GZIP", "ZLIB"):
        raise ConfigError(f"compression must be None, '', 'GZIP' or 'ZLIB' (got compression={compression!r})")
    upper = compression.upper()
    return "" if upper == "NONE" else upper  # type: ignore[return-value]


# ---------------------------------------------------------------------- many headers at once


@functools.cache
def _length_crc_table() -> np.ndarray:
    """A flat (8 * 256) uint32 table: CRC32C of an 8-byte input is the XOR of entry
    ``256 * j + byte_j`` over its bytes (slicing-by-8, with the initial all-ones register folded
    into the first four byte positions and the final inversion into the result)."""
    base = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        base = np.where(base & 1, (base >> 1) ^ np.uint32(_CASTAGNOLI), base >> 1).astype(np.uint32)
    tables = [base]
    for _ in range(7):
        prev = tables[-1]
        tables.append((prev >> 8) ^ base[prev & 0xFF])
    # Byte j of the input meets table 7 - j; the register's ones invert bytes 0-3.
    flip = np.arange(256)
    rows = [tables[7 - j][flip ^ 0xFF if j < 4 else flip] for j in range(8)]
    return np.concatenate(rows).astype(np.uint32)


_SLOT = np.arange(8, dtype=np.intp) * 256


def _mask(crc: np.ndarray) -> np.ndarray:
    """TFRecord's CRC mask, element-wise on uint32 (the arithmetic wraps mod 2**32)."""
    return ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)


def _masked_crcs_of_lengths(length_fields: np.ndarray) -> np.ndarray:
    """Masked CRC32C of each row of an (N, 8) uint8 array: every length field in a few numpy
    steps instead of N calls (the C library takes one ``bytes`` object per call)."""
    entries = _length_crc_table()[length_fields.astype(np.intp) + _SLOT]
    return _mask(np.bitwise_xor.reduce(entries, axis=1) ^ np.uint32(0xFFFFFFFF))


def _gather(arr: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """``arr[p : p + width]`` for each position, as an (N, width) array."""
    return arr[positions[:, None] + np.arange(width)]


def _u32(columns: np.ndarray) -> np.ndarray:
    """(N, 4) uint8 -> N little-endian uint32."""
    return np.ascontiguousarray(columns).view("<u4").reshape(-1)


def _bad_headers(buf: bytes, positions: Sequence[int]) -> np.ndarray:
    """Indices into ``positions`` of the headers whose length CRC does not match."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    bad = []
    for start in range(0, len(positions), _CHECK_SLICE):  # bounds the temporary arrays
        pos = np.asarray(positions[start : start + _CHECK_SLICE], dtype=np.int64)
        head = _gather(arr, pos, HEADER_SIZE)
        bad.append(np.flatnonzero(_masked_crcs_of_lengths(head[:, :8]) != _u32(head[:, 8:])) + start)
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


# ---------------------------------------------------------------------- scanning


def scan_records(buf: bytes, *, uri: str = "<bytes>", verify_crc: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (of each framed record) and data lengths of every record in ``buf``, as int64.

    Only the headers are read (the data CRCs are checked when records are read).

    Raises:
        FormatError: a length CRC mismatch (not a TFRecord, or corrupt), or a truncated
            record or header.
    """
    _, offsets = _scan(bytes(buf), 0, 0, len(buf), verify_crc, uri, 0, "")
    return offsets, _lengths(offsets, len(buf))


def _lengths(offsets: np.ndarray, end: int) -> np.ndarray:
    """Data lengths of contiguous records starting at ``offsets`` and ending at ``end``."""
    return np.diff(offsets, append=np.int64(end)) - OVERHEAD


def _scan(buf: bytes, buf_start: int, pos: int, total: int, verify: bool, uri: str, first: int,
          where: str) -> tuple[int, np.ndarray]:  # fmt: skip
    """Walk the headers in ``buf`` from ``buf[pos]`` on; ``first`` is the number of records before.

    ``buf`` holds bytes ``[buf_start, buf_start + len(buf))`` of a stream of ``total`` bytes.
    Returns the stream position of the first header not wholly inside ``buf`` (``total`` at
    the end) and the stream offsets of the records found (int64). A record that runs past
    ``buf`` but not past ``total`` is recorded and skipped. Records are contiguous, so their
    lengths follow from the offsets (:func:`_lengths`). The length CRCs are checked together
    after the walk; the first bad one is reported.
    """
    n = len(buf) - HEADER_SIZE
    found: list[int] = []  # header positions in buf
    append = found.append
    unpack = _U64.unpack_from
    overrun: int | None = None  # position of a header whose record runs past the stream's end
    limit = total - buf_start - OVERHEAD
    while pos <= n:  # the hot loop of an index build: keep it minimal
        length = unpack(buf, pos)[0]
        if pos + length > limit:
            overrun = pos
            break
        append(pos)
        pos += OVERHEAD + length
    if verify:
        checked = [*found, overrun] if overrun is not None else found
        bad = _bad_headers(buf, checked)
        if len(bad):
            k = int(bad[0])
            raise FormatError(
                f"length CRC mismatch in the header of record {first + k}{where}: not a TFRecord "
                "or corrupt (verify_crc=False skips the check)",
                uri=uri, format=FORMAT, offset=buf_start + checked[k],
            )  # fmt: skip
    if overrun is not None:
        (length,) = unpack(buf, overrun)
        raise FormatError(
            f"truncated record {first + len(found)}{where}: its header announces {length} bytes of data, but "
            f"only {total - buf_start - overrun - HEADER_SIZE} bytes follow the header",
            uri=uri, format=FORMAT, offset=buf_start + overrun,
        )  # fmt: skip
    position = buf_start + pos
    if position < total and buf_start + len(buf) >= total:
        raise FormatError(
            f"truncated record header{where}: {total - position} bytes after the last complete record "
            f"(a header is {HEADER_SIZE} bytes)",
            uri=uri, format=FORMAT, offset=position,
        )  # fmt: skip
    return position, np.array(found, dtype=np.int64) + buf_start


class _Chunks:
    """Consecutive range reads of ``chunk`` bytes, up to ``ahead`` of them in flight.

    ``get(pos)`` returns the chunk holding stream position ``pos`` (and where it starts) and keeps
    the following chunks on their way. A scan only moves forward: chunks before ``pos`` are
    dropped, and a ``pos`` past everything requested (a jump over a huge record) starts the
    chunks afresh at ``pos``, so that skipped data is not fetched.
    """

    def __init__(self, store: Store, uri: str, size: int, chunk: int, ahead: int) -> None:
        self.store, self.uri, self.size, self.chunk, self.ahead = store, uri, size, chunk, ahead
        self._queue: deque[tuple[int, int, cf.Future[bytes]]] = deque()  # (start, length, future)
        self._next = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="s3dlio-tfrecord-scan")

    def get(self, pos: int) -> tuple[int, bytes]:
        queue = self._queue
        while queue and queue[0][0] + queue[0][1] <= pos:
            queue.popleft()[2].cancel()
        if not queue or queue[0][0] > pos:
            self._drop()
            self._next = pos
        while len(queue) < self.ahead and self._next < self.size:
            start, length = self._next, min(self.chunk, self.size - self._next)
            queue.append((start, length, self._pool.submit(self.store.get_range, self.uri, start, length)))
            self._next = start + length
        start, _, fut = queue[0]
        return start, fut.result()

    def _drop(self) -> None:
        for _, _, fut in self._queue:
            fut.cancel()
        self._queue.clear()

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> _Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- the index


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False keeps FormatIndex.__eq__ (array-aware)
class TFRecordIndex(FormatIndex):
    """Where the records of one TFRecord object are.

    Attributes:
        offsets: int64, byte offset of each framed record (its length header); in the
            decompressed stream for GZIP/ZLIB objects.
        lengths: int64, data length of each record (the framed record is 16 bytes longer).
        compression: ``""``, ``"GZIP"`` or ``"ZLIB"``.
        data_size: size of the record stream (the decompressed size for GZIP/ZLIB; the end of
            the last indexed record when the index came from an index file of a compressed
            object).
    """

    offsets: np.ndarray
    lengths: np.ndarray
    compression: str = ""
    data_size: int = 0


# ---------------------------------------------------------------------- the reader


class TFRecordReader(Reader):
    """Random access to the records of one TFRecord object.

    Args:
        uri: the object.
        compression: None (from the extension: ``.gz`` GZIP, ``.zlib`` ZLIB), ``""``/``"NONE"``,
            ``"GZIP"`` or ``"ZLIB"``.
        verify_crc: check both CRCs of every record read (and the length CRCs while indexing).
        decode: None (records as ``bytes``), ``"example"`` (a dict of numpy arrays, see
            :mod:`s3dlio_loader.formats.example`) or a callable applied to each record's bytes.
        features: a ``features`` spec selecting, typing and shaping Example features (implies
            ``decode="example"``).
        index_uri: a DALI-style index file to use instead of scanning the object.
        scan_chunk: bytes per request while scanning (objects up to this size are fetched
            with one request).
        scan_ahead: scan requests in flight (for larger objects).
        index, store, storage_options, on_error: as :class:`~s3dlio_loader.formats.base.Reader`.
            ``on_error="skip"`` leaves out of :meth:`read_batch` (and iteration) the records
            whose CRC or Example decoding fails. A corrupt length header found while scanning
            cannot be skipped (the framing after it is lost): it fails the index.

    >>> import tempfile
    >>> from s3dlio_loader.formats.tfrecord import TFRecordReader, write_tfrecord
    >>> from s3dlio_loader.storage import Store
    >>> uri = f"file://{tempfile.mkdtemp()}/d.tfrecord"
    >>> write_tfrecord(uri, (b"r%d" % i for i in range(5)), store=Store.from_uri(uri))
    >>> TFRecordReader(uri).read_batch([4, 0, 2])
    [b'r4', b'r0', b'r2']
    """

    format: ClassVar[str] = FORMAT

    def __init__(
        self,
        uri: str,
        *,
        compression: str | None = None,
        verify_crc: bool = True,
        decode: Decode = None,
        features: Mapping[str, Any] | None = None,
        index_uri: str | None = None,
        scan_chunk: int = SCAN_CHUNK,
        scan_ahead: int = SCAN_AHEAD,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        self.compression: Compression = resolve_compression(uri, compression)
        if features is not None:
            if decode not in (None, "example"):
                raise ConfigError(f"features= needs decode='example' or None (got decode={decode!r}) for {uri}")
            decode = "example"
        if decode not in (None, "example") and not callable(decode):
            raise ConfigError(f"decode must be None, 'example' or a callable (got decode={decode!r})")
        if not isinstance(scan_chunk, int) or scan_chunk < HEADER_SIZE:
            raise ConfigError(f"scan_chunk must be an int >= {HEADER_SIZE} (got scan_chunk={scan_chunk!r})")
        if not isinstance(scan_ahead, int) or scan_ahead < 1:
            raise ConfigError(f"scan_ahead must be an int >= 1 (got scan_ahead={scan_ahead!r})")
        if index is not None:
            if not isinstance(index, TFRecordIndex):
                raise ConfigError(f"index must be a TFRecordIndex (got {type(index).__name__}) for {uri}")
            if index.compression != self.compression:
                raise ConfigError(
                    f"the index was built for compression={index.compression!r}, the reader has "
                    f"compression={self.compression!r} for {uri}"
                )
        self.decode = decode
        self.features = compile_features(features) if features is not None else None
        self.verify_crc = bool(verify_crc)
        self.index_uri = index_uri
        self.scan_chunk = scan_chunk
        self.scan_ahead = scan_ahead
        self._storage_options = dict(storage_options or {})
        self._plain: bytes | None = None  # the decompressed stream of a GZIP/ZLIB object
        if self.verify_crc and not CRC32C_ACCELERATED:
            log.warning("google_crc32c has no C implementation here: CRC checks will be slow")

    # ------------------------------------------------------------------ index

    @property
    def tfindex(self) -> TFRecordIndex:
        """:attr:`index`, typed."""
        index = self.index
        assert isinstance(index, TFRecordIndex)
        return index

    def __len__(self) -> int:
        return len(self.tfindex.lengths)

    def build_index(self) -> TFRecordIndex:
        """Scan the object once (or read ``index_uri``); see the module docstring."""
        info = self.store.stat(self.uri)
        if self.index_uri is not None:
            return self._index_from_file(info)
        if self.compression:
            plain = self._decompress(info.size)
            self._plain = plain
            _, offsets = _scan(plain, 0, 0, len(plain), self.verify_crc, self.uri, 0,
                               f" (offset in the {self.compression}-decompressed stream)")  # fmt: skip
            data_size = len(plain)
        else:
            data_size = info.size
            offsets = self._scan_object(info.size)
        return TFRecordIndex(
            uri=self.uri, size=info.size, etag=info.etag, offsets=offsets, lengths=_lengths(offsets, data_size),
            compression=self.compression, data_size=data_size,
        )  # fmt: skip

    def _scan_object(self, size: int) -> np.ndarray:
        verify, uri = self.verify_crc, self.uri
        if size <= self.scan_chunk:
            if not size:
                return np.empty(0, dtype=np.int64)
            return _scan(self.store.get(uri, size=size), 0, 0, size, verify, uri, 0, "")[1]
        parts: list[np.ndarray] = []
        count = 0
        with _Chunks(self.store, uri, size, self.scan_chunk, self.scan_ahead) as chunks:
            pos = 0
            while pos < size:
                start, buf = chunks.get(pos)
                end = start + len(buf)
                if pos + HEADER_SIZE > end and end < size:  # the header straddles two chunks
                    head = buf[pos - start :] + chunks.get(end)[1][: pos + HEADER_SIZE - end]
                    pos, found = _scan(head, pos, 0, size, verify, uri, count, "")
                else:
                    pos, found = _scan(buf, start, pos - start, size, verify, uri, count, "")
                parts.append(found)
                count += len(found)
        return np.concatenate(parts)

    def _index_from_file(self, info: ObjectInfo) -> TFRecordIndex:
        assert self.index_uri is not None
        offsets, sizes = read_index(self.index_uri, store=_store_for(self.index_uri, self.store,
                                                                     self._storage_options))  # fmt: skip
        ends = offsets + sizes
        if self.compression:
            data_size = int(ends.max()) if len(ends) else 0
        else:
            data_size = info.size
            bad = np.flatnonzero(ends > info.size)
            if len(bad):
                k = int(bad[0])
                raise FormatError(
                    f"index file line {k + 1}: record at {offsets[k]} of {sizes[k]} bytes ends past the end of "
                    f"{self.uri} ({info.size} bytes); the index does not belong to this object",
                    uri=self.index_uri, format=FORMAT,
                )  # fmt: skip
        return TFRecordIndex(
            uri=self.uri, size=info.size, etag=info.etag, offsets=offsets, lengths=sizes - OVERHEAD,
            compression=self.compression, data_size=data_size,
        )  # fmt: skip

    def _decompress(self, size: int) -> bytes:
        if size == 0:
            return b""
        wbits = _WBITS[self.compression]
        inflater = zlib.decompressobj(wbits)
        pieces: list[bytes] = []
        with contextlib.closing(self._pieces(size)) as parts:
            for start, chunk in parts:
                data = chunk
                while data:
                    if inflater.eof:  # the previous stream ended: GZIP allows another member to follow
                        if self.compression == "ZLIB":
                            raise FormatError("bytes after the end of the ZLIB stream", uri=self.uri,
                                              format=FORMAT, offset=start + len(chunk) - len(data))  # fmt: skip
                        inflater = zlib.decompressobj(wbits)
                    try:
                        pieces.append(inflater.decompress(data))
                    except zlib.error as exc:
                        raise FormatError(f"corrupt {self.compression} stream: {exc}", uri=self.uri, format=FORMAT,
                                          offset=start) from None  # fmt: skip
                    data = inflater.unused_data if inflater.eof else b""
        if not inflater.eof:
            raise FormatError(f"truncated {self.compression} stream (it ends before its end marker)",
                              uri=self.uri, format=FORMAT, offset=size)  # fmt: skip
        return b"".join(pieces)

    def _pieces(self, size: int) -> Generator[tuple[int, bytes], None, None]:
        """The whole object as (offset, bytes) pieces: one get when small, else chunks read ahead."""
        if size <= self.scan_chunk:
            yield 0, self.store.get(self.uri, size=size)
            return
        with _Chunks(self.store, self.uri, size, self.scan_chunk, self.scan_ahead) as chunks:
            start = 0
            while start < size:
                start, chunk = chunks.get(start)
                yield start, chunk
                start += len(chunk)

    def _plain_bytes(self) -> bytes:
        if self._plain is None:
            plain = self._decompress(self.store.stat(self.uri).size)
            index = self.tfindex
            if len(plain) < index.data_size:
                raise FormatError(
                    f"the decompressed stream has {len(plain)} bytes but the index needs {index.data_size}; "
                    "the object changed after indexing",
                    uri=self.uri, format=FORMAT,
                )  # fmt: skip
            self._plain = plain
        return self._plain

    # ------------------------------------------------------------------ reads

    def _read(self, i: int) -> Any:
        return self._records(np.array([i], dtype=np.int64), skip=False)[0]

    def read_batch(self, indices: Sequence[int]) -> list[Any]:
        """Records ``indices`` in that order, fetched with coalesced range requests."""
        return self._records(self._rows(indices), skip=self.on_error == "skip")

    def _rows(self, indices: Sequence[int]) -> np.ndarray:
        n = len(self)
        rows = np.arange(indices.start, indices.stop, indices.step) if isinstance(indices, range) \
            else np.asarray(indices)
        if rows.size == 0:
            return np.empty(0, dtype=np.int64)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            return np.array(check_indices(self.uri, list(indices), n), dtype=np.int64)
        rows = rows.astype(np.int64)
        rows = np.where(rows < 0, rows + n, rows)
        bad = np.flatnonzero((rows < 0) | (rows >= n))
        if len(bad):
            raise IndexError(f"sample {indices[int(bad[0])]} out of range for {self.uri} ({n} samples)")
        return rows

    def _records(self, rows: np.ndarray, *, skip: bool) -> list[Any]:
        index = self.tfindex
        offsets, lengths = index.offsets[rows], index.lengths[rows]
        datas: list[bytes | None] = [None] * len(rows)
        errors: dict[int, FormatError] = {}
        for buf, base, members in self._fetch(offsets, lengths):
            if len(members) < _VECTOR_MIN:
                for m in members.tolist():
                    try:
                        datas[m] = self._unframe(buf, int(offsets[m]) - base, int(rows[m]), int(offsets[m]),
                                                 int(lengths[m]))  # fmt: skip
                    except FormatError as exc:
                        errors[m] = exc
            else:
                self._unframe_many(buf, base, members, rows, offsets, lengths, datas, errors)
        if not errors and self.decode is None:
            return datas
        out = []
        decode = self._decode
        for m, data in enumerate(datas):
            try:
                if data is None:
                    raise errors[m]
                out.append(decode(data, offsets[m]) if self.decode is not None else data)
            except FormatError as exc:
                if not skip:
                    raise
                self._skip(exc)
        return out

    def _fetch(self, offsets: np.ndarray, lengths: np.ndarray) -> list[tuple[bytes, int, np.ndarray]]:
        """(buffer, stream offset of its first byte, members) per request, members indexing ``offsets``."""
        if self.compression:
            return [(self._plain_bytes(), 0, np.arange(len(offsets)))]
        if len(offsets) == 0:
            return []
        first, last = int(offsets[0]), int(offsets[-1] + lengths[-1]) + OVERHEAD
        if last - first <= READ_BLOCK and np.array_equal(offsets[1:], offsets[:-1] + lengths[:-1] + OVERHEAD):
            # Consecutive records in order (iteration, sequential batches): one request.
            return [(self.store.get_range(self.uri, first, last - first), first, np.arange(len(offsets)))]
        order = np.argsort(offsets, kind="stable")
        starts = offsets[order]
        ends = starts + lengths[order] + OVERHEAD
        gap = self.store.options.coalesce_gap
        if int(ends.max()) - int(starts[0]) <= READ_BLOCK:
            # Sort, then cut where the gap to everything before exceeds coalesce_gap.
            reach = np.maximum.accumulate(ends)
            cuts = (np.flatnonzero(starts[1:] - reach[:-1] > gap) + 1).tolist()
        else:
            cuts = _cut_blocks(starts.tolist(), ends.tolist(), gap, READ_BLOCK)
        groups = np.split(order, cuts)
        firsts, lasts = [0, *cuts], [*cuts, len(order)]
        bounds = [(int(starts[a]), int(ends[a:b].max())) for a, b in zip(firsts, lasts, strict=True)]
        if len(groups) == 1:
            start, end = bounds[0]
            return [(self.store.get_range(self.uri, start, end - start), start, groups[0])]
        # Not store.get_ranges: it would merge adjacent blocks back into one request.
        pool = _read_pool()
        futures = [pool.submit(self.store.get_range, self.uri, a, b - a) for a, b in bounds]
        try:
            return [(f.result(), a, g) for f, (a, _), g in zip(futures, bounds, groups, strict=True)]
        finally:
            for f in futures:
                f.cancel()

    def _unframe(self, buf: bytes, pos: int, row: int, offset: int, length: int) -> bytes:
        """The data of the record framed at ``buf[pos:]``, checked."""
        stored, length_crc = _HEADER.unpack_from(buf, pos)
        if self.verify_crc and masked_crc32c(buf[pos : pos + 8]) != length_crc:
            raise self._error(f"record {row}: length CRC mismatch (corrupt header)", offset)
        if stored != length:
            raise self._length_error(row, stored, length, offset)
        data = buf[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
        if self.verify_crc:
            (data_crc,) = _U32.unpack_from(buf, pos + HEADER_SIZE + length)
            computed = masked_crc32c(data)
            if computed != data_crc:
                raise self._crc_error(row, data_crc, computed, offset)
        return data

    def _unframe_many(self, buf: bytes, base: int, members: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
                      lengths: np.ndarray, datas: list[bytes | None], errors: dict[int, FormatError]) -> None:
        """:meth:`_unframe` for many records of one buffer, the framing checked in numpy."""
        arr = np.frombuffer(buf, dtype=np.uint8)
        pos = offsets[members] - base
        n = lengths[members]
        head = _gather(arr, pos, HEADER_SIZE)
        stored = np.ascontiguousarray(head[:, :8]).view("<u8").reshape(-1)
        bad = stored != n.astype(np.uint64)
        pieces = [buf[p : p + k] for p, k in zip((pos + HEADER_SIZE).tolist(), n.tolist(), strict=True)]
        bad_head = computed = stored_crc = None
        if self.verify_crc:
            bad_head = _masked_crcs_of_lengths(head[:, :8]) != _u32(head[:, 8:])
            crc = _crc32c
            computed = _mask(np.fromiter((crc(p) for p in pieces), dtype=np.uint32, count=len(pieces)))
            stored_crc = _u32(_gather(arr, pos + HEADER_SIZE + n, FOOTER_SIZE))
            bad_data = computed != stored_crc
            bad |= bad_head | bad_data
        if len(members) == len(datas) and np.array_equal(members, np.arange(len(members))):
            datas[:] = pieces
        else:
            for m, piece in zip(members.tolist(), pieces, strict=True):
                datas[m] = piece
        members_list = members.tolist()
        for k in np.flatnonzero(bad).tolist():
            m = members_list[k]
            datas[m] = None
            row, offset = int(rows[m]), int(offsets[m])
            if bad_head is not None and bad_head[k]:
                errors[m] = self._error(f"record {row}: length CRC mismatch (corrupt header)", offset)
            elif stored[k] != n[k] or stored_crc is None or computed is None:
                errors[m] = self._length_error(row, int(stored[k]), int(n[k]), offset)
            else:
                errors[m] = self._crc_error(row, int(stored_crc[k]), int(computed[k]), offset)

    def _length_error(self, row: int, stored: int, length: int, offset: int) -> FormatError:
        return self._error(
            f"record {row}: its header says {stored} bytes of data but the index says {length}; the object "
            "was rewritten after it was indexed, or the index file does not belong to it",
            offset,
        )

    def _crc_error(self, row: int, stored: int, computed: int, offset: int) -> FormatError:
        return self._error(f"record {row}: data CRC mismatch (stored {stored:#010x}, computed {computed:#010x})",
                           offset)  # fmt: skip

    def _error(self, message: str, offset: int) -> FormatError:
        if self.compression:
            message += f" (offset in the {self.compression}-decompressed stream)"
        return FormatError(message, uri=self.uri, format=FORMAT, offset=offset)

    def _decode(self, data: bytes, offset: int) -> Any:
        decode = self.decode
        if decode is None:
            return data
        if decode == "example":
            return decode_example(data, self.features, uri=self.uri, offset=int(offset))
        return decode(data)

    def __iter__(self) -> Iterator[Any]:
        """Every record in order, read about ``ITER_BYTES`` at a time (``on_error`` applies)."""
        lengths = self.tfindex.lengths
        n = len(lengths)
        if n == 0:
            return
        ends = np.cumsum(lengths + OVERHEAD)
        start = 0
        skip = self.on_error == "skip"
        while start < n:
            stop = max(int(np.searchsorted(ends, ends[start] + ITER_BYTES, side="right")), start + 1)
            yield from self._records(np.arange(start, stop), skip=skip)
            start = stop


    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plain"] = None  # a worker decompresses again rather than receive a copy
        return state


# ---------------------------------------------------------------------- index files


def read_index(
    index_uri: str, *, store: Store | None = None, storage_options: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and framed sizes (int64 arrays) from a DALI-style index file.

    Raises:
        FormatError: a line is not two non-negative integers, or a size is below 16.
    """
    store = store if store is not None else store_for(index_uri, storage_options)
    text = store.get(index_uri)
    tokens: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise FormatError(f"index file line {number} is not '<offset> <size>' (two non-negative integers)",
                              uri=index_uri, format=FORMAT)  # fmt: skip
        tokens += fields
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except OverflowError:
        raise FormatError("an index file number does not fit in int64", uri=index_uri, format=FORMAT) from None
    pairs = values.reshape(-1, 2)
    offsets, sizes = pairs[:, 0].copy(), pairs[:, 1].copy()
    small = np.flatnonzero(sizes < OVERHEAD)
    if len(small):
        k = int(small[0])
        raise FormatError(f"index file line {k + 1}: size {sizes[k]} is below the {OVERHEAD} bytes of framing",
                          uri=index_uri, format=FORMAT)  # fmt: skip
    return offsets, sizes


def write_index(
    uri: str,
    index_uri: str | None = None,
    *,
    compression: str | None = None,
    verify_crc: bool = True,
    store: Store | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write the DALI-style index of TFRecord ``uri`` to ``index_uri`` (default ``uri + ".idx"``).

    One scan of the object (as :meth:`TFRecordReader.build_index`); returns the number of
    records. For a GZIP/ZLIB object the offsets are in the decompressed stream.
    """
    reader = TFRecordReader(uri, compression=compression, verify_crc=verify_crc, store=store,
                            storage_options=storage_options)  # fmt: skip
    index = reader.tfindex
    target = index_uri if index_uri is not None else uri + ".idx"
    _store_for(target, reader.store, storage_options).put(target, _index_text(index.offsets,
                                                                              index.lengths + OVERHEAD))
    return len(index.lengths)


def _index_text(offsets: Iterable[int], sizes: Iterable[int]) -> bytes:
    return "".join(f"{o} {s}\n" for o, s in zip(offsets, sizes, strict=True)).encode("ascii")


def _cut_blocks(starts: list[int], ends: list[int], gap: int, cap: int) -> list[int]:
    """Where to cut sorted ranges into requests: at a gap above ``gap``, or before a block
    would span more than ``cap`` bytes (a single longer range is a block of its own)."""
    cuts = []
    block_start, block_end = starts[0], ends[0]
    for i in range(1, len(starts)):
        end = max(block_end, ends[i])
        if starts[i] - block_end > gap or end - block_start > cap:
            cuts.append(i)
            block_start, block_end = starts[i], ends[i]
        else:
            block_end = end
    return cuts


_pool_state: tuple[int, cf.ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _read_pool() -> cf.ThreadPoolExecutor:
    """This process's thread pool for the concurrent block reads of ``read_batch`` (rebuilt after fork)."""
    global _pool_state
    state = _pool_state
    if state is None or state[0] != os.getpid():
        with _pool_lock:
            state = _pool_state
            if state is None or state[0] != os.getpid():
                pool = cf.ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="s3dlio-tfrecord-read")
                state = _pool_state = (os.getpid(), pool)
    return state[1]


def _store_for(uri: str, store: Store, storage_options: Mapping[str, Any] | None) -> Store:
    """``store`` when it serves ``uri``'s scheme, else the shared store of that scheme."""
    if parse_uri(uri).scheme == store.scheme:
        return store
    return store_for(uri, storage_options)


# ---------------------------------------------------------------------- the writer


def write_tfrecord(
    uri: str,
    records: Iterable[bytes | bytearray | memoryview | Mapping[str, Any]],
    *,
    store: Store,
    compression: str | None = None,
    level: int = 6,
    index_uri: str | None = None,
    buffer_size: int = WRITE_BUFFER,
) -> None:
    """Write ``records`` as a TFRecord object, streaming (memory stays about ``buffer_size``).

    Each record is bytes, or a dict encoded as a ``tf.train.Example`` (see
    :func:`~s3dlio_loader.formats.example.encode_example`). ``compression`` as in
    :func:`resolve_compression` (from the extension when None); ``level`` is the zlib level
    for GZIP/ZLIB. With ``index_uri`` a DALI-style index is written too (no second pass).
    An exception while writing leaves no object behind.

    Raises:
        ConfigError: a record that is neither bytes nor a dict, or bad options.
    """
    kind = resolve_compression(uri, compression)
    if isinstance(records, bytes | bytearray | memoryview | str | Mapping):
        raise ConfigError(
            f"records must be an iterable of records (bytes or dicts), not one {type(records).__name__}; "
            "wrap a single record in a list"
        )
    if not isinstance(level, int) or not -1 <= level <= 9:
        raise ConfigError(f"level must be a zlib level from -1 to 9 (got level={level!r})")
    if not isinstance(buffer_size, int) or buffer_size < 1:
        raise ConfigError(f"buffer_size must be a positive int (got buffer_size={buffer_size!r})")
    deflater = zlib.compressobj(level, zlib.DEFLATED, _WBITS[kind]) if kind else None
    offsets: list[int] = []
    sizes: list[int] = []
    position = 0
    with store.open_writer(uri) as writer:
        buf = bytearray()
        for number, record in enumerate(records):
            data = _record_bytes(record, number)
            length = _U64.pack(len(data))
            buf += length
            buf += _U32.pack(masked_crc32c(length))
            buf += data
            buf += _U32.pack(masked_crc32c(data))
            if index_uri is not None:
                offsets.append(position)
                sizes.append(len(data) + OVERHEAD)
            position += len(data) + OVERHEAD
            if len(buf) >= buffer_size:
                writer.write(deflater.compress(buf) if deflater is not None else buf)
                buf = bytearray()  # the writer may keep a reference: never reuse it
        if buf:
            writer.write(deflater.compress(buf) if deflater is not None else buf)
        if deflater is not None:
            writer.write(deflater.flush())
    if index_uri is not None:
        _store_for(index_uri, store, None).put(index_uri, _index_text(offsets, sizes))


def _record_bytes(record: Any, number: int) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, bytearray | memoryview):
        return bytes(record)
    if isinstance(record, Mapping):
        return encode_example(record)
    raise ConfigError(f"record {number} is a {type(record).__name__}; records must be bytes or dicts (Examples)")


__all__ = [
    "CRC32C_ACCELERATED",
    "FORMAT",
    "HEADER_SIZE",
    "OVERHEAD",
    "TFRecordIndex",
    "TFRecordReader",
    "frame_record",
    "masked_crc32c",
    "read_index",
    "resolve_compression",
    "scan_records",
    "write_index",
    "write_tfrecord",
]
