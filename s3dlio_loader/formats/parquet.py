"""Parquet: one row group (or one row) per sample, column chunks fetched by byte range.

The index step reads the file's tail with one range request (``footer_cap`` bytes, or the
whole file when smaller; a second request only when the footer is larger than that) and
keeps, per row group, its row count and the byte range of every column chunk, plus the
serialized footer itself, so decoding needs no further metadata request.

The read step fetches only the column chunks of the requested row groups and selected
columns (nearby ranges merged by :meth:`Store.get_ranges`) and decodes them with pyarrow
from memory: the fetched chunks are served to pyarrow at their original offsets by a
sparse read-only file, without copying them.

>>> import tempfile, pyarrow as pa
>>> from s3dlio_loader.storage import Store
>>> d = tempfile.mkdtemp(); uri = f"file://{d}/t.parquet"; store = Store.from_uri(uri)
>>> write_parquet(uri, {"x": [1, 2, 3, 4], "y": ["a", "b", "c", "d"]}, store=store, row_group_size=2)
>>> reader = ParquetReader(uri, store=store)
>>> len(reader), reader[1].to_pydict()
(2, {'x': [3, 4], 'y': ['c', 'd']})
>>> ParquetReader(uri, store=store, items="row", decode="numpy", columns=["x"])[3]
{'x': np.int64(4)}
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import os
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, FormatError, ObjectNotFoundError, StorageError
from ..storage import ObjectInfo, Store, parse_uri
from .base import FormatIndex, OnError, Reader, check_indices

#: The process that imported this module; its forks decode without pyarrow's threads (see ParquetReader).
_IMPORT_PID = os.getpid()

FORMAT = "parquet"
MAGIC = b"PAR1"
#: Bytes after the footer: its 4-byte little-endian length and the magic.
TRAILER = 8
#: Default bytes read from the end of the file to find the footer in one request.
DEFAULT_FOOTER_CAP = 4 << 20
#: parquet-mr 1.2.8 and older left the dictionary page header out of total_compressed_size;
#: pyarrow then reads up to this many extra bytes past the chunk (PARQUET-816), so we fetch them.
_OLD_MR_PADDING = 100

Items = Literal["row_group", "row"]
Decode = Literal["arrow", "numpy", "raw"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False keeps FormatIndex.__eq__ (array-aware)
class ParquetIndex(FormatIndex):
    """Where the row groups and column chunks of one Parquet object are.

    Attributes:
        num_rows: rows of each row group, int64 ``[G]``.
        chunk_start: byte offset of each column chunk, int64 ``[G, C]`` (the dictionary page
            when there is one, else the first data page).
        chunk_length: compressed byte length of each column chunk, int64 ``[G, C]``.
        columns: the C leaf column paths, dotted (``"s.x"``, ``"l.list.element"``).
        fields: the top-level field names (the columns of the decoded table).
        column_field: for each leaf column, the index of its top-level field, int32 ``[C]``.
        footer: the serialized footer followed by its length and the magic, uint8.
    """

    num_rows: np.ndarray
    chunk_start: np.ndarray
    chunk_length: np.ndarray
    columns: tuple[str, ...]
    fields: tuple[str, ...]
    column_field: np.ndarray
    footer: np.ndarray

    @property
    def num_row_groups(self) -> int:
        """Number of row groups."""
        return int(self.num_rows.shape[0])

    def metadata(self) -> pq.FileMetaData:
        """The footer parsed by pyarrow (no request)."""
        return _parse_footer(self.uri, self.footer, self.size)


class _SparseFile:
    """A read-only file of ``size`` bytes of which only some ranges are present.

    pyarrow reads it through :class:`pyarrow.PythonFile`; ``read_buffer`` hands out
    memoryview slices of the fetched buffers, which pyarrow wraps without copying. A read
    touching bytes that were not fetched raises FormatError (the footer pointed outside
    what it declared).
    """

    def __init__(self, uri: str, size: int, segments: Sequence[tuple[int, memoryview]] = ()) -> None:
        self._uri = uri
        self._size = size
        self._starts: list[int] = []
        self._views: list[memoryview] = []
        self._pos = 0
        self.closed = False
        self.set_segments(segments)

    def set_segments(self, segments: Sequence[tuple[int, memoryview]]) -> None:
        """Serve these ``(offset, bytes)`` ranges from now on (and nothing else)."""
        ordered = sorted(segments, key=lambda s: s[0])
        self._starts = [s for s, _ in ordered]
        self._views = [v for _, v in ordered]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = base + pos
        return self._pos

    def read_buffer(self, nbytes: int | None = None) -> memoryview:
        pos = self._pos
        n = self._size - pos if nbytes is None or nbytes < 0 else min(nbytes, max(0, self._size - pos))
        k = bisect.bisect_right(self._starts, pos) - 1
        if k >= 0:
            view = self._views[k]
            off = pos - self._starts[k]
            if off + n <= view.nbytes:
                self._pos = pos + n
                return view[off : off + n]
            joined = self._join(k, pos, n)
            if joined is not None:
                self._pos = pos + n
                return joined
        raise FormatError(
            f"the decoder asked for bytes [{pos}, {pos + n}) outside the column chunks the footer declares",
            uri=self._uri, format=FORMAT, offset=pos,
        )

    def _join(self, k: int, pos: int, n: int) -> memoryview | None:
        # A read spanning adjacent fetched segments (rare: overlapping padded chunks): copy.
        pieces, at, end = [], pos, pos + n
        while at < end and k < len(self._views):
            start, view = self._starts[k], self._views[k]
            if start > at or at >= start + view.nbytes:
                if start + view.nbytes <= at:
                    k += 1
                    continue
                return None
            take = min(end, start + view.nbytes) - at
            pieces.append(view[at - start : at - start + take])
            at += take
            k += 1
        return memoryview(b"".join(pieces)) if at >= end else None

    def read(self, nbytes: int | None = None) -> bytes:
        return bytes(self.read_buffer(nbytes))

    def close(self) -> None:
        self.closed = True


class RawRowGroup:
    """The fetched, undecoded column chunks of one row group (``decode="raw"``).

    ``chunks[k]`` is a read-only memoryview of the bytes at ``offsets[k]`` in the object
    (column chunk ``leaf_columns[k]``); :meth:`decode` turns them into a pyarrow Table
    without any request. Pickling copies the chunks into bytes.
    """

    __slots__ = ("chunks", "leaf_columns", "metadata", "num_rows", "offsets", "row_group", "size", "uri")

    def __init__(self, uri: str, size: int, row_group: int, num_rows: int, metadata: pq.FileMetaData,
                 leaf_columns: tuple[int, ...], offsets: tuple[int, ...], chunks: tuple[memoryview, ...]) -> None:
        self.uri = uri
        self.size = size
        self.row_group = row_group
        self.num_rows = num_rows
        self.metadata = metadata
        self.leaf_columns = leaf_columns
        self.offsets = offsets
        self.chunks = chunks

    @property
    def nbytes(self) -> int:
        """Bytes held (sum of the column chunks)."""
        return sum(c.nbytes for c in self.chunks)

    def decode(self, *, use_threads: bool = False) -> pa.Table:
        """The row group as a pyarrow Table (selected columns only).

        Raises:
            FormatError: the chunks do not decode.
        """
        return _decode_row_group(self.uri, self.size, self.metadata, self.row_group, list(self.leaf_columns),
                                 list(zip(self.offsets, self.chunks, strict=True)), use_threads)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_raw, (self.uri, self.size, self.row_group, self.num_rows, self.metadata,
                               self.leaf_columns, self.offsets,
                               tuple(bytes(c) for c in self.chunks)))

    def __repr__(self) -> str:
        return (f"RawRowGroup({self.uri!r}, row_group={self.row_group}, num_rows={self.num_rows}, "
                f"chunks={len(self.chunks)}, nbytes={self.nbytes})")


def _rebuild_raw(uri: str, size: int, row_group: int, num_rows: int, metadata: pq.FileMetaData,
                 leaf_columns: tuple[int, ...], offsets: tuple[int, ...], chunks: tuple[bytes, ...]) -> RawRowGroup:
    return RawRowGroup(uri, size, row_group, num_rows, metadata, leaf_columns, offsets,
                       tuple(memoryview(c) for c in chunks))


class ParquetReader(Reader):
    """Samples of one Parquet object: row groups (default) or rows.

    Args:
        uri: the object.
        items: ``"row_group"`` (sample i is row group i) or ``"row"`` (sample i is row i of the
            file; rows of one row group are decoded together and the last decoded row group
            is kept, so consecutive rows make no new request).
        decode: what a sample is.

            * ``"arrow"``: a :class:`pyarrow.Table` (for ``items="row"``, a 1-row Table: a
              zero-copy slice that keeps the column types);
            * ``"numpy"``: a dict column name -> numpy array (for ``items="row"``, column
              name -> numpy scalar, or the element ``to_numpy(zero_copy_only=False)`` gives
              for list/struct columns);
            * ``"raw"``: a :class:`RawRowGroup` holding the fetched column-chunk bytes, to
              decode later (``items="row_group"`` only).
        columns: top-level field names, dotted nested paths (``"s.x"``) or field indices; only
            their column chunks are fetched, and they are decoded in file order. All when None.
        footer_cap: bytes read from the end of the object to find the footer (at least 8).
        info: the object's size/etag from a listing; saves the ``stat`` request when the
            index is built (one range request then builds it).
        use_threads: let pyarrow decode the columns of a row group in parallel threads. Default
            (None): yes in the process that imported this module, no in processes forked from
            it (loader and DataLoader workers, which parallelise by process). In forked
            workers, about 1 process in 100 aborted at exit with pyarrow's threads here
            ("terminate called without an active exception", pyarrow 26); in the main process
            they are what pyarrow itself uses by default (0.67x -> 0.93x of a plain
            ``read_row_group`` loop through the torch adapter with 0 workers).
        max_fetch_bytes: :meth:`read_batch` fetches the row groups of a batch in runs of at
            most this many bytes (one row group at least; the Store's ``range_chunk``, 8 MiB
            by default, when None), each run one ``get_ranges`` call, decoded before the next
            is fetched: small row groups share requests, and a batch of large ones never
            becomes one giant buffer.
        mmap: file:// only: decode from a private memory map of the file instead of reading
            the column chunks into buffers first (saves that copy: ~20 % of a row group's CPU
            here). Opt-in because a mapped file that another program truncates in place makes
            the process fault (``SIGBUS``) when it touches the missing pages; replacing a file
            (write a new one, rename it over) is safe.
        index, store, storage_options, on_error: see :class:`~s3dlio_loader.formats.base.Reader`.

    Raises:
        ConfigError: an unknown ``items``/``decode``, ``decode="raw"`` with ``items="row"``,
            ``mmap=True`` on another scheme than file://,
            a column that is not in the file (when the index is first used).
    """

    format = FORMAT

    def __init__(
        self,
        uri: str,
        *,
        items: Items = "row_group",
        decode: Decode = "arrow",
        columns: Sequence[str | int] | None = None,
        footer_cap: int = DEFAULT_FOOTER_CAP,
        info: ObjectInfo | None = None,
        use_threads: bool | None = None,
        max_fetch_bytes: int | None = None,
        mmap: bool = False,
        index: ParquetIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if items not in ("row_group", "row"):
            raise ConfigError(f"items must be 'row_group' or 'row' (got items={items!r})")
        if decode not in ("arrow", "numpy", "raw"):
            raise ConfigError(f"decode must be 'arrow', 'numpy' or 'raw' (got decode={decode!r})")
        if decode == "raw" and items == "row":
            raise ConfigError("decode='raw' serves whole row groups; use items='row_group' with it")
        if not isinstance(footer_cap, int) or footer_cap < TRAILER:
            raise ConfigError(f"footer_cap must be an int >= {TRAILER} (got footer_cap={footer_cap!r})")
        if columns is not None and (isinstance(columns, str | bytes) or not all(
                isinstance(c, str | int | np.integer) for c in columns)):
            raise ConfigError(f"columns must be a sequence of names or indices (got columns={columns!r})")
        if max_fetch_bytes is not None and (not isinstance(max_fetch_bytes, int) or max_fetch_bytes < 1):
            raise ConfigError(f"max_fetch_bytes must be a positive int (got max_fetch_bytes={max_fetch_bytes!r})")
        if index is not None and not isinstance(index, ParquetIndex):
            raise ConfigError(f"index must be a ParquetIndex (got {type(index).__name__})")
        if mmap and parse_uri(uri).scheme != "file":
            raise ConfigError(f"mmap=True needs a file:// URI (got {uri!r}); leave mmap=False for other storage")
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        self.items: Items = items
        self.decode: Decode = decode
        self.columns = None if columns is None else list(columns)
        self.footer_cap = footer_cap
        self.info = info
        self.use_threads = use_threads
        self.max_fetch_bytes = max_fetch_bytes if max_fetch_bytes is not None else self.store.options.range_chunk
        self._metadata: pq.FileMetaData | None = None
        self._decoder: _Decoder | None = None
        self._plan: _Plan | None = None
        self._row_starts: np.ndarray | None = None
        self._cached: tuple[int, Any] | None = None  # (row group, decoded) for items="row"
        self.mmap = bool(mmap)
        self._mapping: tuple[int, memoryview] | None = None  # (pid, view of the private map)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_metadata"] = None  # re-parsed from index.footer where needed
        state["_decoder"] = None
        state["_cached"] = None
        state["_mapping"] = None
        return state

    # ------------------------------------------------------------------ index

    @property
    def index(self) -> ParquetIndex:
        """The object's :class:`ParquetIndex` (built with one or two requests on first access)."""
        idx = super().index
        assert isinstance(idx, ParquetIndex)
        return idx

    def build_index(self) -> ParquetIndex:
        """Read the footer (one range request of the tail; a stat first unless ``info`` was given).

        Raises:
            FormatError: not a Parquet object (too short, bad magic, footer longer than the
                object, footer that does not parse, column chunks outside the object).
        """
        info = self.info if self.info is not None else self.store.stat(self.uri)
        return read_index(self.uri, store=self.store, size=info.size, etag=info.etag,
                          footer_cap=self.footer_cap)

    def metadata(self) -> pq.FileMetaData:
        """The pyarrow FileMetaData of the object (parsed from the index; no request)."""
        if self._metadata is None:
            self._metadata = self.index.metadata()
        return self._metadata

    def __len__(self) -> int:
        idx = self.index
        if self.items == "row":
            return int(idx.num_rows.sum())
        return idx.num_row_groups

    def _projection(self) -> _Plan:
        """The projection resolved against the index, with its byte ranges per row group."""
        if self._plan is None:
            idx = self.index
            leaves = resolve_columns(idx, self.columns)
            lengths = idx.chunk_length[:, leaves]
            self._plan = _Plan(None if self.columns is None else leaves.tolist(), leaves,
                               idx.chunk_start[:, leaves].tolist(), lengths.tolist(), lengths.sum(axis=1).tolist())
        return self._plan

    def _row_group_of(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        if self._row_starts is None:
            self._row_starts = np.concatenate([[0], np.cumsum(self.index.num_rows)]).astype(np.int64)
        r = np.asarray(rows, dtype=np.int64)
        groups = np.searchsorted(self._row_starts, r, side="right") - 1
        return groups, r - self._row_starts[groups]

    # ------------------------------------------------------------------ reads

    def _read(self, i: int) -> Any:
        if self.items == "row":
            groups, within = self._row_group_of([i])
            decoded = self._decoded_groups([int(groups[0])])[int(groups[0])]
            return self._row(decoded, int(within[0]))
        return self._fetch_and_decode([i], writable=True)[0]

    def read_batch(self, indices: Sequence[int]) -> list[Any]:
        """Samples ``indices`` in that order.

        The selected column chunks of the distinct row groups asked for are fetched with one
        :meth:`Store.get_ranges` call per ``max_fetch_bytes`` (nearby chunks merged into one
        request), and each row group is decoded once. With ``on_error="skip"`` samples that
        do not decode are left out (see :attr:`skipped`).
        """
        idx = check_indices(self.uri, indices, len(self))
        if self.items == "row_group":
            return [s for s in self._fetch_and_decode(idx, skip=True, writable=True) if s is not _FAILED]
        groups, within = self._row_group_of(idx)
        decoded = self._decoded_groups([int(g) for g in groups], skip=True)
        out = []
        for g, j in zip(groups.tolist(), within.tolist(), strict=True):
            d = decoded[g]
            if d is not _FAILED:
                out.append(self._row(d, j))
        return out

    def row_group(self, i: int) -> Any:
        """Row group ``i`` decoded as ``decode`` says, whatever ``items`` is."""
        (j,) = check_indices(self.uri, [i], self.index.num_row_groups)
        return self._fetch_and_decode([j], writable=True)[0]

    def _fetch(self, groups: Sequence[int]) -> list[list[tuple[int, memoryview]]]:
        """The (offset, bytes) of the selected column chunks of each group, coalesced into few requests."""
        plan = self._projection()
        ranges = [r for g in groups for r in zip(plan.starts[g], plan.lengths[g], strict=True)]
        if self.mmap:
            mapped = self._mapped_file()
            views = [mapped[start : start + length] for start, length in ranges]
        else:
            views = self.store.get_ranges(self.uri, ranges)
        per = len(plan.leaves)
        return [list(zip(plan.starts[g], views[k * per : (k + 1) * per], strict=True))
                for k, g in enumerate(groups)]

    def _mapped_file(self) -> memoryview:
        """This process's private (copy-on-write) map of the file, checked against the index."""
        current = self._mapping
        if current is not None and current[0] == os.getpid():
            return current[1]
        import mmap as mmaplib

        path = parse_uri(self.uri).path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != self.index.size:
                    raise FormatError(f"the file has {size} bytes; it had {self.index.size} when it was indexed "
                                      "(rewritten since?)", uri=self.uri, format=FORMAT, offset=None)  # fmt: skip
                view = memoryview(mmaplib.mmap(f.fileno(), 0, access=mmaplib.ACCESS_COPY))
        except FileNotFoundError:
            raise ObjectNotFoundError("no such object", uri=self.uri, op="get_range") from None
        self._mapping = (os.getpid(), view)
        return view

    def _waves(self, groups: list[int]) -> list[list[int]]:
        """``groups`` in order (row groups lie in file order), cut into runs of at most
        ``max_fetch_bytes`` (one group at least)."""
        if len(groups) == 1:
            return [groups]
        nbytes = self._projection().group_bytes
        waves: list[list[int]] = []
        total = 0
        for g in sorted(groups):
            size = nbytes[g]
            if waves and total + size <= self.max_fetch_bytes:
                waves[-1].append(g)
                total += size
            else:
                waves.append([g])
                total = size
        return waves

    def _fetch_and_decode(self, groups: Sequence[int], skip: bool = False, writable: bool = False) -> list[Any]:
        """Each distinct group of ``groups`` decoded once, in the order asked. ``writable``: numpy
        columns may be written by the caller (see :func:`table_to_numpy`); a group asked for twice
        is then given out once as decoded and as copies after that."""
        decoded: dict[int, Any] = {}
        for wave in self._waves(list(dict.fromkeys(groups))):
            for g, segments in zip(wave, self._fetch(wave), strict=True):
                try:
                    decoded[g] = self._decode_group(g, segments, writable)
                except FormatError as exc:
                    if not skip or self.on_error == "raise":
                        raise
                    self._skip(exc)
                    decoded[g] = _FAILED
        out: list[Any] = []
        seen: set[int] = set()
        for g in groups:
            d = decoded[g]
            # A group asked for twice: each numpy dict is its own; with writable arrays, writing
            # into one must not change another (copies are rare: padding repeats a few samples).
            if g in seen and isinstance(d, dict):
                d = {k: v.copy() if writable and isinstance(v, np.ndarray) else v for k, v in d.items()}
            out.append(d)
            seen.add(g)
        return out

    def decodes_with_threads(self) -> bool:
        """Whether row groups are decoded with pyarrow's threads in this process (see ``use_threads``)."""
        return self.use_threads if self.use_threads is not None else os.getpid() == _IMPORT_PID

    def _decode_group(self, g: int, segments: list[tuple[int, memoryview]], writable: bool = False) -> Any:
        plan = self._projection()
        idx = self.index
        if self.decode == "raw":
            return RawRowGroup(self.uri, idx.size, g, int(idx.num_rows[g]), self.metadata(),
                               tuple(plan.leaves.tolist()), tuple(s for s, _ in segments),
                               tuple(v for _, v in segments))
        if self._decoder is None:
            self._decoder = _Decoder(self.uri, idx.size, self.metadata())
        table = self._decoder.decode(g, plan.selected, segments, self.decodes_with_threads())
        if self.decode == "numpy":
            try:
                return table_to_numpy(table, writable=writable)
            except Exception as exc:  # e.g. invalid UTF-8 in a string column
                raise FormatError(f"row group {g} does not convert to numpy: {exc}", uri=self.uri,
                                  format=FORMAT, offset=int(min((s for s, _ in segments), default=0))) from None
        return table

    def _decoded_groups(self, groups: Sequence[int], skip: bool = False) -> dict[int, Any]:
        """Each distinct group decoded once (reusing the cached last one); the last group stays cached."""
        cached = self._cached
        out: dict[int, Any] = {}
        need = []
        for g in dict.fromkeys(groups):
            if cached is not None and cached[0] == g:
                out[g] = cached[1]
            else:
                need.append(g)
        if need:
            skipped_before = self.skipped
            out.update(zip(need, self._fetch_and_decode(need, skip=skip), strict=True))
            if self.skipped != skipped_before:
                # One warning per failed row group; count every requested row of it as skipped.
                failed = {g for g in need if out[g] is _FAILED}
                self.skipped += sum(1 for g in groups if g in failed) - len(failed)
        last = groups[-1] if len(groups) else None
        if last is not None and out[last] is not _FAILED:
            self._cached = (last, out[last])
        return out

    def _row(self, decoded: Any, j: int) -> Any:
        if self.decode == "numpy":
            return {name: arr[j] for name, arr in decoded.items()}
        return decoded.slice(j, 1)


class _Plan(NamedTuple):
    """A reader's projection: the leaf columns to decode (None: all), their indices, and per
    row group the selected chunks' offsets and lengths and their total (plain lists: cheap to index)."""

    selected: list[int] | None
    leaves: np.ndarray
    starts: list[list[int]]
    lengths: list[list[int]]
    group_bytes: list[int]


class _Failed:
    def __repr__(self) -> str:
        return "<failed>"


_FAILED: Any = _Failed()


# ---------------------------------------------------------------------- index


def read_index(
    uri: str,
    *,
    store: Store,
    size: int,
    etag: str | None = None,
    footer_cap: int = DEFAULT_FOOTER_CAP,
) -> ParquetIndex:
    """Build the :class:`ParquetIndex` of a Parquet object of ``size`` bytes.

    One range request of the last ``min(size, footer_cap)`` bytes; a second one for the rest
    of the footer when it is longer than that.

    Raises:
        FormatError: not a Parquet object, or a footer that does not describe one.
    """
    if size < len(MAGIC) + TRAILER:
        raise FormatError(f"{size} bytes is too short for a Parquet file (at least 12)",
                          uri=uri, format=FORMAT, offset=0)
    n = min(size, footer_cap)
    tail = store.get_range(uri, size - n, n)
    if tail[-4:] != MAGIC:
        what = "an encrypted footer (PARE), which is not supported" if tail[-4:] == b"PARE" else \
            f"{bytes(tail[-4:])!r} instead of the magic {MAGIC!r}"
        raise FormatError(f"not a Parquet file: it ends with {what}", uri=uri, format=FORMAT, offset=size - 4)
    footer_len = struct.unpack_from("<I", tail, n - TRAILER)[0]
    if footer_len + TRAILER + len(MAGIC) > size:
        raise FormatError(f"footer length {footer_len} is larger than the file ({size} bytes)",
                          uri=uri, format=FORMAT, offset=size - TRAILER)
    need = footer_len + TRAILER
    if n == size and tail[:4] != MAGIC:
        raise FormatError(f"not a Parquet file: it starts with {bytes(tail[:4])!r}", uri=uri, format=FORMAT,
                          offset=0)
    if need > n:
        head = store.get_range(uri, size - need, need - n)
        footer = np.empty(need, dtype=np.uint8)
        footer[: need - n] = np.frombuffer(head, dtype=np.uint8)
        footer[need - n :] = np.frombuffer(tail, dtype=np.uint8)
    else:
        footer = np.frombuffer(tail, dtype=np.uint8)[n - need :].copy()
    return index_from_footer(uri, footer, size=size, etag=etag)


def index_from_footer(uri: str, footer: np.ndarray, *, size: int, etag: str | None) -> ParquetIndex:
    """The index of an object of ``size`` bytes from its footer bytes (footer + length + magic).

    The offsets are read from the footer's Thrift encoding directly rather than through
    pyarrow's metadata objects: on some corrupt footers pyarrow's ``RowGroupMetaData.column``
    throws a C++ exception that Python cannot catch and the process aborts.
    """
    footer_start = size - int(footer.shape[0])
    _parse_footer(uri, footer, size)  # pyarrow must accept it too, or decoding would fail later
    try:
        meta = _Thrift(footer.tobytes()[: -TRAILER]).struct()
        paths = _leaf_paths(meta.get(2) or [])
        row_groups = meta.get(4) or []
        created_by = meta.get(6)
        pad = _needs_dictionary_padding(created_by.decode("utf-8", "replace")
                                        if isinstance(created_by, bytes) else "")
        g, c = len(row_groups), len(paths)
        num_rows = np.empty(g, dtype=np.int64)
        start = np.empty((g, c), dtype=np.int64)
        length = np.empty((g, c), dtype=np.int64)
        for i, rg in enumerate(row_groups):
            num_rows[i] = rg[3]
            chunks = rg.get(1) or []
            if len(chunks) != c:
                raise _BadFooter(f"row group {i} has {len(chunks)} column chunks, the schema {c} columns")
            for j, chunk in enumerate(chunks):
                if chunk.get(1) is not None:
                    raise _BadFooter(f"column chunk {j} of row group {i} lives in another file "
                                     f"({chunk[1]!r}), which is not supported")
                cmd = chunk.get(3)
                if cmd is None:
                    raise _BadFooter(f"column chunk {j} of row group {i} has no metadata (encrypted?)")
                first = cmd[9]
                dictionary = cmd.get(11)
                # As pyarrow does: the dictionary page, when it comes first, starts the chunk.
                if dictionary is not None and 0 < dictionary < first:
                    first = dictionary
                n = cmd[7]
                if pad:
                    n += max(0, min(_OLD_MR_PADDING, size - (first + n)))
                start[i, j], length[i, j] = first, n
    except (_BadFooter, KeyError, TypeError, ValueError, OverflowError, IndexError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise FormatError(f"footer does not describe a valid Parquet file: {what}",
                          uri=uri, format=FORMAT, offset=footer_start) from None
    if (num_rows < 0).any():
        raise FormatError("negative row count in the footer", uri=uri, format=FORMAT, offset=footer_start)
    bad = (start < 0) | (length < 0) | (start + length > size)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise FormatError(
            f"column chunk {'.'.join(paths[j])!r} of row group {i} declares bytes "
            f"[{start[i, j]}, {start[i, j] + length[i, j]}) outside the file ({size} bytes)",
            uri=uri, format=FORMAT, offset=int(max(start[i, j], 0)),
        )
    fields = tuple(dict.fromkeys(p[0] for p in paths))
    position = {name: k for k, name in enumerate(fields)}
    column_field = np.array([position[p[0]] for p in paths], dtype=np.int32)
    return ParquetIndex(
        uri=uri, size=size, etag=etag, num_rows=num_rows, chunk_start=start, chunk_length=length,
        columns=tuple(".".join(p) for p in paths), fields=fields, column_field=column_field,
        footer=footer,
    )


def _parse_footer(uri: str, footer: np.ndarray, size: int) -> pq.FileMetaData:
    # pyarrow only needs the footer, its length and the magic at the end of what it is given.
    try:
        return pq.read_metadata(pa.BufferReader(pa.py_buffer(footer)))
    except Exception as exc:
        raise FormatError(f"footer does not parse: {exc}", uri=uri, format=FORMAT,
                          offset=size - int(footer.shape[0])) from None


class _BadFooter(Exception):
    pass


class _Thrift:
    """A reader of Thrift's compact protocol: structs become ``{field id: value}`` dicts.

    Only what the Parquet footer uses; every size is checked against the bytes left, so a
    corrupt footer raises _BadFooter instead of looping or allocating.
    """

    MAX_DEPTH = 64

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _BadFooter("footer ends inside a value")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _BadFooter("varint longer than 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int, depth: int) -> Any:
        if kind in (1, 2):  # booleans inside a list are one byte each
            return self.byte() == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.pos += 8
            if self.pos > len(self.data):
                raise _BadFooter("footer ends inside a double")
            return struct.unpack_from("<d", self.data, self.pos - 8)[0]
        if kind == 8:
            n = self.varint()
            if n > len(self.data) - self.pos:
                raise _BadFooter(f"string of {n} bytes past the end of the footer")
            self.pos += n
            return self.data[self.pos - n : self.pos]
        if kind in (9, 10):
            head = self.byte()
            n, elem = head >> 4, head & 0x0F
            if n == 15:
                n = self.varint()
            if n > len(self.data) - self.pos:  # every element takes at least one byte
                raise _BadFooter(f"list of {n} elements past the end of the footer")
            return [self.value(elem, depth + 1) for _ in range(n)]
        if kind == 11:
            n = self.varint()
            if n == 0:
                return {}
            if 2 * n > len(self.data) - self.pos:
                raise _BadFooter(f"map of {n} entries past the end of the footer")
            types = self.byte()
            return {self._key(self.value(types >> 4, depth + 1)): self.value(types & 0x0F, depth + 1)
                    for _ in range(n)}
        if kind == 12:
            return self.struct(depth + 1)
        raise _BadFooter(f"unknown Thrift type {kind} at footer byte {self.pos}")

    @staticmethod
    def _key(k: Any) -> Any:
        return k if isinstance(k, int | bytes | bool | float) else repr(k)

    def struct(self, depth: int = 0) -> dict[int, Any]:
        if depth > self.MAX_DEPTH:
            raise _BadFooter("Thrift structs nested too deep")
        out: dict[int, Any] = {}
        field = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            delta, kind = head >> 4, head & 0x0F
            field = field + delta if delta else self.zigzag()
            if kind in (1, 2):
                out[field] = kind == 1
            else:
                out[field] = self.value(kind, depth)


def _leaf_paths(schema: list[Any]) -> list[list[str]]:
    """Each leaf column's path (a list of names, exact even when a name contains a dot)."""
    if not schema:
        raise _BadFooter("empty schema")
    paths: list[list[str]] = []
    # (names so far, children left) for each open group; element 0 is the root.
    stack: list[tuple[list[str], int]] = [([], int(schema[0].get(5) or 0))]
    for k, element in enumerate(schema[1:], start=1):
        while stack and stack[-1][1] == 0:
            stack.pop()
        if not stack:
            raise _BadFooter(f"schema element {k} is outside the root's children")
        prefix, left = stack[-1]
        stack[-1] = (prefix, left - 1)
        name = element[4].decode("utf-8", "replace")
        children = element.get(5)
        if children:
            stack.append(([*prefix, name], int(children)))
        else:
            paths.append([*prefix, name])
    if any(left for _, left in stack):
        raise _BadFooter("schema ends before all its groups' children")
    return paths


def _needs_dictionary_padding(created_by: str) -> bool:
    """True for files written by parquet-mr before 1.2.9 (PARQUET-816)."""
    m = re.match(r"\s*parquet-mr version (\d+)\.(\d+)\.(\d+)", created_by)
    return m is not None and tuple(int(x) for x in m.groups()) < (1, 2, 9)


def resolve_columns(index: ParquetIndex, columns: Sequence[str | int] | None) -> np.ndarray:
    """The sorted leaf column indices a projection selects.

    A name selects the top-level field of that name when there is one, otherwise every leaf
    whose dotted path is the name or starts with it followed by a dot (``"s"`` or ``"s.x"``);
    an integer selects the top-level field at that position.

    Raises:
        ConfigError: a name that matches nothing, or an index out of range.
    """
    if columns is None:
        return np.arange(len(index.columns), dtype=np.intp)
    leaves: set[int] = set()
    nfields = len(index.fields)
    for c in columns:
        if isinstance(c, int | np.integer):
            k = int(c)
            if not -nfields <= k < nfields:
                raise ConfigError(f"column index {k} out of range: {index.uri} has {nfields} "
                                  f"columns {list(index.fields)}")
            sel = np.flatnonzero(index.column_field == k % nfields)
        elif c in index.fields:
            sel = np.flatnonzero(index.column_field == index.fields.index(c))
        else:
            sel = np.array([j for j, p in enumerate(index.columns) if p == c or p.startswith(c + ".")],
                           dtype=np.intp)
            if sel.size == 0:
                raise ConfigError(f"no column {c!r} in {index.uri}; columns are {list(index.fields)}")
        leaves.update(sel.tolist())
    return np.array(sorted(leaves), dtype=np.intp)


# ---------------------------------------------------------------------- decode


class _Decoder:
    """pyarrow's reader over a :class:`_SparseFile`, kept between row groups of one object.

    Building the pyarrow ParquetFile costs tens of microseconds; a reader reuses one and
    swaps the fetched segments in before each row group (under a lock).
    """

    def __init__(self, uri: str, size: int, metadata: pq.FileMetaData) -> None:
        self.uri = uri
        self._sparse = _SparseFile(uri, size)
        # pre_buffer=False: one read per column chunk, exactly the ranges we fetched.
        self._file = pq.ParquetFile(pa.PythonFile(self._sparse, mode="r"), metadata=metadata, pre_buffer=False)
        self._lock = threading.Lock()

    def decode(self, row_group: int, leaves: list[int] | None, segments: Sequence[tuple[int, memoryview]],
               use_threads: bool = True) -> pa.Table:
        """Leaf columns ``leaves`` (all when None) of ``row_group`` from its fetched chunks."""
        with self._lock:
            self._sparse.set_segments(segments)
            try:
                if leaves is None:
                    return self._file.read_row_group(row_group, use_threads=use_threads)
                # By leaf index, not by name: pyarrow resolves names by dotted prefix, so a field
                # named "a.b" would also pull in the nested column a.b, which was not fetched.
                return self._file.reader.read_row_group(row_group, column_indices=leaves, use_threads=use_threads)
            except (FormatError, StorageError):
                raise
            except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ArrowException... on corrupt pages
                first = min((s for s, _ in segments), default=None)
                raise FormatError(f"row group {row_group} does not decode: {exc}", uri=self.uri, format=FORMAT,
                                  offset=first) from None
            finally:
                self._sparse.set_segments(())  # do not keep the fetched buffers alive


def _decode_row_group(
    uri: str,
    size: int,
    metadata: pq.FileMetaData,
    row_group: int,
    leaves: list[int] | None,
    segments: Sequence[tuple[int, memoryview]],
    use_threads: bool = True,
) -> pa.Table:
    """Decode leaf columns ``leaves`` (all when None) of a row group from its fetched chunks."""
    return _Decoder(uri, size, metadata).decode(row_group, leaves, segments, use_threads)


def table_to_numpy(table: pa.Table, *, writable: bool = False) -> dict[str, np.ndarray]:
    """Column name -> numpy array (object arrays for list/struct columns).

    Numeric columns without nulls are views of the table's buffers, read-only unless
    ``writable``. Pass ``writable=True`` only for a table that nothing else uses (one just
    decoded): the arrays then share its memory writable, so that a framework can take them
    without a copy (``torch.from_numpy`` refuses read-only arrays; copying a decoded row group
    cost as much as a third of its decode here).
    """
    out = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        arr = _writable_column(col) if writable else None
        out[name] = arr if arr is not None else col.to_numpy()
    return out


def _writable_column(col: pa.ChunkedArray) -> np.ndarray | None:
    """A writable numpy view of a single-chunk, null-free, fixed-width numeric column, else None."""
    if col.num_chunks != 1 or col.null_count:
        return None
    chunk = col.chunk(0)
    kind = chunk.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) or len(chunk) == 0:
        return None
    dtype = np.dtype(kind.to_pandas_dtype())
    data = chunk.buffers()[1]
    start = chunk.offset * dtype.itemsize
    nbytes = len(chunk) * dtype.itemsize
    holder = (ctypes.c_char * nbytes).from_address(data.address + start)
    holder._owner = chunk  # keeps the arrow buffer alive with the view
    return np.frombuffer(cast(Any, holder), dtype=dtype)


# ---------------------------------------------------------------------- write


class _Sink:
    """What pyarrow's PythonFile writes into: forwards to the ObjectWriter, never closes it."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._pos = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        n = int(self._writer.write(data))
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        # The ObjectWriter is committed (or aborted) by write_parquet, never by pyarrow.
        self.closed = True


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    try:
        if isinstance(data, Mapping):
            return pa.table(dict(data))
        if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
            return pa.Table.from_pylist(data)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot make a Parquet table from this data: {exc}") from None
    raise ConfigError(
        "write_parquet takes a pyarrow Table, a dict of columns or a list of dicts "
        f"(got {type(data).__name__})"
    )


def write_parquet(
    uri: str,
    data: Any,
    *,
    store: Store,
    row_group_size: int | None = None,
    compression: str | None = "snappy",
    **pq_options: Any,
) -> None:
    """Write ``data`` as one Parquet object, streamed through ``store.open_writer``.

    Args:
        data: a :class:`pyarrow.Table` (or RecordBatch), a dict column name -> array/list, or
            a list of row dicts.
        row_group_size: most rows per row group (pyarrow's default when None).
        compression: ``"snappy"``, ``"zstd"``, ``"gzip"``, ``"lz4"``, ``"brotli"``, or
            ``None``/``"none"``.
        **pq_options: passed to :func:`pyarrow.parquet.write_table` (``use_dictionary``,
            ``data_page_size``, ``write_statistics``...).

    Row groups are written as they are encoded; the object appears only when complete.

    Raises:
        ConfigError: data that is not tabular, or an option pyarrow rejects.
    """
    table = _as_table(data)
    with store.open_writer(uri) as writer:
        try:
            pq.write_table(table, pa.PythonFile(_Sink(writer), mode="w"), row_group_size=row_group_size,
                           compression=compression or "none", **pq_options)
        except StorageError:
            raise
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ConfigError(f"cannot write {uri} as Parquet: {exc}") from None


__all__ = [
    "DEFAULT_FOOTER_CAP",
    "ParquetIndex",
    "ParquetReader",
    "RawRowGroup",
    "index_from_footer",
    "read_index",
    "resolve_columns",
    "table_to_numpy",
    "write_parquet",
]
