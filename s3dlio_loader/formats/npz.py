"""NPZ: numpy ``.npz`` archives (a zip of ``.npy`` members), read with range requests.

The index step reads the zip's end record and central directory from the object's tail,
then every member's local header and ``.npy`` header in one coalesced ``get_ranges`` pass.
Stored (uncompressed) members are then read as byte ranges and decoded without a copy
(``np.frombuffer`` over the fetched bytes); deflated members are inflated with ``zlib`` and
their CRC-32 checked. Stored members' CRCs are not checked: that would mean reading every
byte twice. Arrays are **read-only**; ``.copy()`` one to write to it.

>>> import tempfile, numpy as np
>>> from s3dlio_loader.formats.npz import NpzReader, write_npz
>>> uri = f"file://{tempfile.mkdtemp()}/a.npz"
>>> write_npz(uri, {"x": np.arange(4), "y": np.ones((4, 2), np.float32)})
>>> sample = NpzReader(uri)[0]
>>> sorted(sample), sample["x"].tolist()
(['x', 'y'], [0, 1, 2, 3])
>>> rows = NpzReader(uri, rows=True)
>>> len(rows), rows[3]["x"].item(), rows[3]["y"].tolist()
(4, 3, [1.0, 1.0])
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import numpy as np

from ..errors import ConfigError, FormatError
from ..storage import ObjectWriter, Store, store_for
from .base import FormatIndex, OnError, Reader, check_indices
from .npy import (
    MAX_HEADER_SIZE,
    NpyHeader,
    _dtype_for,
    array_from_buffer,
    array_to_npy_bytes,
    npy_preamble,
    parse_npy_header,
    row_blocks,
)

FORMAT = "npz"
#: Bytes read from the end of the object to find the end-of-central-directory record: the
#: 22-byte record, a comment of up to 64 KiB, the zip64 locator and record (and, for most
#: archives, the whole central directory).
TAIL_FETCH = (1 << 16) + 1024
#: Bytes read per member at index time, past its local header, to get its .npy header.
MEMBER_HEAD_FETCH = 4096
_LOCAL_EXTRA_SLACK = 160  # a local header's extra field may be longer than the directory's copy
_INFLATE_CHUNK = 4 << 20

_EOCD = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries total, cd size, cd offset, comment
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk of zip64 record, its offset, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # sig, size, made, need, disk, cd disk, entries here/total, cd size/offset
_CDH = struct.Struct("<4s6H3L5H2L")  # central directory file header (46 bytes)
_LFH = struct.Struct("<4s5H3L2H")  # local file header (30 bytes)
_SIG_EOCD, _SIG_LOC, _SIG_EOCD64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_SIG_CDH, _SIG_LFH, _SIG_DD = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_STORED, _DEFLATED = 0, 8
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800
#: Sizes and offsets above this are written with zip64 fields (zipfile's conservative limit).
_ZIP64_LIMIT = (1 << 31) - 1
_DATA_ALIGN = 64  # stored members' array data is aligned to this in files we write
_ALIGN_EXTRA_ID = 0xD935  # the extra-field id zipalign uses for alignment padding
_DOS_DATE_1980 = (1 << 5) | 1  # 1980-01-01: files we write are byte-for-byte reproducible


def _fail(uri: str, message: str, offset: int | None) -> NoReturn:
    raise FormatError(message, uri=uri, format=FORMAT, offset=offset)


# ---------------------------------------------------------------------- bytes on demand

Fetch = Callable[[list[tuple[int, int]]], list[memoryview]]


class _Source:
    """The bytes of one object, fetched on demand (many ranges per request) and kept."""

    def __init__(self, uri: str, size: int, fetch: Fetch | None, whole: Any = None) -> None:
        self.uri, self.size, self._fetch = uri, size, fetch
        self._starts: list[int] = []
        self._bufs: list[memoryview] = []
        if whole is not None:
            self._add(0, memoryview(whole).cast("B"))

    def _add(self, start: int, buf: memoryview) -> None:
        i = bisect.bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._bufs.insert(i, buf)

    def _find(self, offset: int, length: int) -> memoryview | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            start, buf = self._starts[i], self._bufs[i]
            if offset + length <= start + len(buf):
                return buf[offset - start : offset - start + length]
        return None

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        """``(offset, length)`` ranges, which must lie inside the object."""
        out: list[memoryview | None] = [self._find(o, n) for o, n in ranges]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            if self._fetch is None:
                _fail(self.uri, "truncated archive", self.size)
            fetched = self._fetch([ranges[i] for i in missing])
            for i, view in zip(missing, fetched, strict=True):
                out[i] = view
                self._add(ranges[i][0], view)
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------- the zip directory


@dataclasses.dataclass
class _Member:
    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    lho: int  # absolute offset of the local header
    bound: int = 0  # where the next member (or the directory) starts
    data_start: int = 0
    npy: NpyHeader | None = None


def _find_eocd(uri: str, tail: memoryview, tail_off: int, size: int) -> int:
    data = bytes(tail)
    pos = data.rfind(_SIG_EOCD, 0, max(0, len(data) - _EOCD.size + 4))
    fallback = -1
    while pos >= 0:
        comment_len = struct.unpack_from("<H", data, pos + 20)[0]
        end = pos + _EOCD.size + comment_len
        if end == len(data):
            return tail_off + pos
        if end < len(data) and fallback < 0:
            fallback = pos  # trailing bytes after the comment: accepted, like zipfile
        pos = data.rfind(_SIG_EOCD, 0, pos)
    if fallback >= 0:
        return tail_off + fallback
    _fail(uri, "no zip end-of-central-directory record (not an .npz/zip file, or truncated)",
          max(0, size - _EOCD.size))  # fmt: skip


def _read_directory(uri: str, source: _Source) -> tuple[list[_Member], int]:
    """The members named by the central directory, and where the directory starts."""
    size = source.size
    if size < _EOCD.size:
        _fail(uri, f"truncated: {size} bytes, a zip archive has at least {_EOCD.size}", size)
    tail_len = min(size, TAIL_FETCH)
    (tail,) = source.read([(size - tail_len, tail_len)])
    eocd = _find_eocd(uri, tail, size - tail_len, size)
    (_, disk, cd_disk, _, count, cd_size, cd_offset, _) = _EOCD.unpack(source.read([(eocd, _EOCD.size)])[0])
    cd_end = eocd
    locator = eocd - _EOCD64_LOCATOR.size
    loc = _EOCD64_LOCATOR.unpack(source.read([(locator, _EOCD64_LOCATOR.size)])[0]) if locator >= 0 else None
    if loc is not None and loc[0] == _SIG_LOC:
        if loc[1] != 0 or loc[3] > 1:
            _fail(uri, "multi-disk zip archives are not supported", locator)
        rec = locator - _EOCD64.size
        candidates = [p for p in (rec, loc[2]) if 0 <= p <= size - _EOCD64.size]
        for p in candidates:
            fields = _EOCD64.unpack(source.read([(p, _EOCD64.size)])[0])
            if fields[0] == _SIG_EOCD64:
                (_, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset) = fields
                cd_end = p
                break
        else:
            _fail(uri, "zip64 end-of-central-directory record not found where its locator points", locator)
    elif count == _U16 or _U32 in (cd_size, cd_offset):
        _fail(uri, "zip64 archive without its zip64 end-of-central-directory locator", eocd)
    if disk != 0 or cd_disk != 0:
        _fail(uri, "multi-disk zip archives are not supported", eocd)
    concat = cd_end - cd_offset - cd_size  # bytes prepended to the archive (0 for .npz files)
    if concat < 0:
        _fail(uri, f"central directory ({cd_size} bytes at {cd_offset}) overlaps its end record at {cd_end}",
              cd_end)  # fmt: skip
    cd_start = cd_offset + concat
    if count * _CDH.size > cd_size:
        _fail(uri, f"central directory of {cd_size} bytes cannot hold {count} entries", cd_start)
    (cd,) = source.read([(cd_start, cd_size)])
    members: list[_Member] = []
    seen: set[str] = set()
    pos = 0
    for _ in range(count):
        if pos + _CDH.size > len(cd):
            _fail(uri, "central directory is truncated", cd_start + pos)
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _, lho) = \
            _CDH.unpack_from(cd, pos)  # fmt: skip
        where = cd_start + pos
        if sig != _SIG_CDH:
            _fail(uri, f"bad central directory entry signature {sig!r}", where)
        end = pos + _CDH.size + nlen + elen + clen
        if end > len(cd):
            _fail(uri, "central directory entry runs past the directory", where)
        raw_name = bytes(cd[pos + _CDH.size : pos + _CDH.size + nlen])
        extra = cd[pos + _CDH.size + nlen : pos + _CDH.size + nlen + elen]
        pos = end
        try:
            name = raw_name.decode("utf8" if flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError:
            _fail(uri, f"member name {raw_name!r} is not valid UTF-8", where)
        usize, csize, lho = _zip64_fields(uri, extra, usize, csize, lho, where)
        if name.endswith("/") and usize == 0:
            continue  # a directory entry
        if flags & _FLAG_ENCRYPTED:
            _fail(uri, f"member {name!r} is encrypted", where)
        if method not in (_STORED, _DEFLATED):
            _fail(uri, f"member {name!r} uses compression method {method}; only stored (0) and deflated (8) "
                       "are supported", where)  # fmt: skip
        if method == _STORED and csize != usize:
            _fail(uri, f"stored member {name!r} has compressed size {csize} != size {usize}", where)
        if name in seen:
            _fail(uri, f"duplicate member {name!r}", where)
        seen.add(name)
        lho += concat
        if lho + _LFH.size > cd_start:
            _fail(uri, f"member {name!r}: local header offset {lho} is past the data area", where)
        members.append(_Member(name, raw_name, flags, method, crc, csize, usize, lho))
    order = sorted(members, key=lambda m: m.lho)
    for k, m in enumerate(order):
        m.bound = order[k + 1].lho if k + 1 < len(order) else cd_start
    return members, cd_start


def _zip64_fields(uri: str, extra: memoryview, usize: int, csize: int, lho: int, where: int) -> tuple[int, int, int]:
    if _U32 not in (usize, csize, lho):
        return usize, csize, lho
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + n]
        if len(body) < n:
            _fail(uri, "corrupt extra field in the central directory", where)
        if tag == 1:
            values = [v for v in (usize, csize, lho) if v == _U32]
            if len(body) < 8 * len(values):
                _fail(uri, "zip64 extra field too short", where)
            it = iter(struct.unpack_from(f"<{len(values)}Q", body))
            return tuple(next(it) if v == _U32 else v for v in (usize, csize, lho))  # type: ignore[return-value]
        pos += 4 + n
    _fail(uri, "a size or offset is 0xFFFFFFFF but there is no zip64 extra field", where)


def _resolve_member(uri: str, m: _Member, view: memoryview, max_header_size: int) -> int:
    """Parse ``m``'s local header and .npy header from ``view`` (bytes from ``m.lho``).

    Returns 0 when done, else how many bytes from ``m.lho`` are needed.
    """
    try:
        return _resolve_member_inner(uri, m, view, max_header_size)
    except FormatError as exc:
        if exc.format == FORMAT:
            raise
        # An .npy header error inside the archive: report it as the archive's, naming the member.
        where = f" at byte {exc.offset}" if exc.offset is not None else ""
        message = str(exc).removeprefix(f"{exc.format} {exc.uri}{where}: ")
        raise FormatError(f"member {m.name!r}: {message}", uri=uri, format=FORMAT, offset=exc.offset) from None


def _resolve_member_inner(uri: str, m: _Member, view: memoryview, max_header_size: int) -> int:
    avail = len(view)
    if avail < _LFH.size:
        return _LFH.size
    sig, _, _, _, _, _, _, _, _, nlen, elen = _LFH.unpack_from(view, 0)
    if sig != _SIG_LFH:
        _fail(uri, f"member {m.name!r}: bad local header signature {bytes(sig)!r}", m.lho)
    head = _LFH.size + nlen + elen
    m.data_start = m.lho + head
    if m.data_start + m.csize > m.bound:
        _fail(uri, f"member {m.name!r}: its {m.csize} bytes of data at {m.data_start} run past {m.bound} "
                   "(truncated or overlapping members)", m.lho)  # fmt: skip
    if avail < head:
        return head
    if bytes(view[_LFH.size : _LFH.size + nlen]) != m.raw_name:
        _fail(uri, f"member {m.name!r}: name in the local header differs from the directory", m.lho)
    data = view[head : head + m.csize]
    if m.method == _STORED:
        if len(data) < min(12, m.csize):
            return head + min(12, m.csize)
        _, _, data_offset = npy_preamble(data, uri=uri, base=m.data_start, max_header_size=max_header_size)
        if data_offset > m.csize:
            _fail(uri, f"member {m.name!r}: .npy header of {data_offset} bytes is longer than the member "
                       f"({m.usize} bytes)", m.data_start)  # fmt: skip
        if len(data) < data_offset:
            return head + data_offset
        m.npy = parse_npy_header(data, uri=uri, base=m.data_start, max_header_size=max_header_size)
        return 0
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, 12)
        if len(out) >= 10:
            _, _, data_offset = npy_preamble(out, uri=uri, base=m.data_start, max_header_size=max_header_size)
            if data_offset > len(out):
                out += d.decompress(d.unconsumed_tail, data_offset - len(out))
    except zlib.error as exc:
        _fail(uri, f"member {m.name!r}: corrupt deflate data ({exc})", m.data_start)
    if (len(out) < 10 or len(out) < data_offset) and not d.eof and len(data) < m.csize:
        return head + min(m.csize, 12 + max_header_size + 65536)  # more compressed bytes needed
    m.npy = parse_npy_header(out, uri=uri, base=m.data_start, max_header_size=max_header_size)
    return 0


def _member_fail(uri: str, m: _Member, message: str) -> NoReturn:
    _fail(uri, f"member {m.name!r}: {message}", m.data_start)


def _build_index(uri: str, size: int, etag: str | None, source: _Source, max_header_size: int) -> NpzIndex:
    members, _ = _read_directory(uri, source)
    pending = list(members)
    need = {id(m): min(m.bound - m.lho, _LFH.size + len(m.raw_name) + _LOCAL_EXTRA_SLACK + MEMBER_HEAD_FETCH)
            for m in members}  # fmt: skip
    for _ in range(4):  # local header -> name/extra lengths -> .npy preamble -> long .npy header
        if not pending:
            break
        views = source.read([(m.lho, need[id(m)]) for m in pending])
        still = []
        for m, view in zip(pending, views, strict=True):
            more = _resolve_member(uri, m, view, max_header_size)
            if more:
                if more > m.bound - m.lho or more <= len(view):
                    _fail(uri, f"member {m.name!r}: truncated header", m.lho + len(view))
                need[id(m)] = more
                still.append(m)
        pending = still
    if pending:  # pragma: no cover - each round strictly grows the need
        _fail(uri, f"member {pending[0].name!r}: header could not be read", pending[0].lho)
    ndims: list[int] = []
    dims: list[int] = []
    for m in members:
        assert m.npy is not None
        end = m.npy.data_offset + m.npy.nbytes
        if end > m.usize:
            _member_fail(uri, m, f"truncated: shape {m.npy.shape} of {m.npy.dtype} needs {end} bytes, the "
                                 f"member has {m.usize}")  # fmt: skip
        ndims.append(len(m.npy.shape))
        dims.extend(m.npy.shape)
    return NpzIndex(
        uri=uri, size=size, etag=etag,
        names=tuple(m.name for m in members),
        method=np.array([m.method for m in members], np.uint16),
        crc32=np.array([m.crc for m in members], np.uint32),
        compressed_size=np.array([m.csize for m in members], np.int64),
        file_size=np.array([m.usize for m in members], np.int64),
        data_offset=np.array([m.data_start for m in members], np.int64),
        npy_data_offset=np.array([m.npy.data_offset for m in members if m.npy], np.int64),
        descr=tuple(m.npy.descr for m in members if m.npy),
        ndim=np.array(ndims, np.int64),
        shape=np.array(dims, np.int64),
        fortran_order=np.array([m.npy.fortran_order for m in members if m.npy], bool),
    )  # fmt: skip


# ---------------------------------------------------------------------- index


@dataclasses.dataclass(frozen=True, eq=False)
class NpzIndex(FormatIndex):
    """The member table of one .npz object (arrays have one entry per member, in directory order).

    Attributes:
        names: member names in the zip (``"x.npy"``); :attr:`keys` strips ``.npy`` as np.load does.
        method: 0 stored, 8 deflated.
        crc32: CRC-32 from the central directory.
        compressed_size, file_size: member sizes in the zip (equal for stored members).
        data_offset: where the member's (compressed) bytes start in the object.
        npy_data_offset: where the array data starts inside the member's .npy bytes.
        descr: each member's dtype descr (see :class:`~s3dlio_loader.formats.npy.NpyIndex`).
        ndim, shape: dimensions of each member; ``shape`` is all members' dims concatenated.
        fortran_order: per member.
    """

    names: tuple[str, ...]
    method: np.ndarray
    crc32: np.ndarray
    compressed_size: np.ndarray
    file_size: np.ndarray
    data_offset: np.ndarray
    npy_data_offset: np.ndarray
    descr: tuple[str, ...]
    ndim: np.ndarray
    shape: np.ndarray
    fortran_order: np.ndarray

    @property
    def keys(self) -> tuple[str, ...]:
        """Member names without the ``.npy`` suffix: the keys of a sample dict."""
        return tuple(n[:-4] if n.endswith(".npy") else n for n in self.names)

    def member_shape(self, i: int) -> tuple[int, ...]:
        """Shape of member ``i``."""
        start = int(self.ndim[:i].sum())
        return tuple(int(d) for d in self.shape[start : start + int(self.ndim[i])])

    def member_dtype(self, i: int) -> np.dtype[Any]:
        """dtype of member ``i``."""
        return _dtype_for(self.descr[i])


def read_npz_index(uri: str, *, store: Store | None = None, storage_options: Mapping[str, Any] | None = None,
                   max_header_size: int = MAX_HEADER_SIZE) -> NpzIndex:
    """Build the index of one .npz object with range requests: a stat, the tail (end record
    and usually the whole directory), then every member's local and .npy headers in one
    coalesced ``get_ranges`` pass."""
    store = store if store is not None else store_for(uri, storage_options)
    info = store.stat(uri)
    source = _Source(uri, info.size, lambda ranges: store.get_ranges(uri, ranges))
    return _build_index(uri, info.size, info.etag, source, max_header_size)


def index_from_bytes(data: Any, *, uri: str = "<bytes>", max_header_size: int = MAX_HEADER_SIZE) -> NpzIndex:
    """The index of an .npz archive held in memory (``data`` is any bytes-like object).

    Raises:
        FormatError: not a readable .npz archive.
    """
    view = memoryview(data).cast("B")
    return _build_index(uri, len(view), None, _Source(uri, len(view), None, view), max_header_size)


# ---------------------------------------------------------------------- reader


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Per-member facts derived once from the index."""

    keys: tuple[str, ...]
    dtypes: tuple[np.dtype[Any], ...]
    shapes: tuple[tuple[int, ...], ...]
    nbytes: tuple[int, ...]


class NpzReader(Reader):
    """Samples of one .npz object: all its arrays at once (default) or row by row.

    Args:
        uri: the .npz object.
        rows: ``False``: one sample, a dict ``key -> array`` of every member (keys as in
            ``np.load(...).files``). ``True``: sample ``i`` is ``{key: array[i]}``; every
            member needs the same length along axis 0 (else ConfigError) and C order.
            Rows of stored members are range reads, coalesced across members and rows by
            :meth:`read_batch`. A deflated member cannot be read in pieces: it is inflated
            once, on first use, and kept in this reader (memory: its full size).
        max_header_size: longest .npy header accepted, in bytes.
        index, store, storage_options, on_error: see :class:`~s3dlio_loader.formats.base.Reader`.

    In the default mode without an index, the first read fetches the whole object with one
    GET and builds the index from those bytes (its ``etag`` is then None).
    """

    format: ClassVar[str] = FORMAT

    def __init__(
        self,
        uri: str,
        *,
        rows: bool = False,
        max_header_size: int = MAX_HEADER_SIZE,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if index is not None and not isinstance(index, NpzIndex):
            raise ConfigError(f"NpzReader needs an NpzIndex (got {type(index).__name__}) for {uri}")
        if index is not None and index.uri != uri:
            raise ConfigError(f"the index given was built for {index.uri}, not {uri}")
        if not isinstance(max_header_size, int) or max_header_size < 1:
            raise ConfigError(f"max_header_size must be a positive int (got {max_header_size=})")
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        self.rows = bool(rows)
        self.max_header_size = max_header_size
        self._plan: _Plan | None = None
        self._inflated: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_inflated"] = {}  # a worker inflates what it needs itself
        return state

    @property
    def index(self) -> NpzIndex:
        """The object's index (built on first use)."""
        idx = super().index
        assert isinstance(idx, NpzIndex)
        return idx

    def build_index(self) -> NpzIndex:
        """Read the zip directory and member headers with range requests."""
        return read_npz_index(self.uri, store=self.store, max_header_size=self.max_header_size)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of each sample dict."""
        return self.index.keys

    def __len__(self) -> int:
        if not self.rows:
            return 1
        plan = self._get_plan()
        self._check_rows(plan)
        return plan.shapes[0][0] if plan.shapes else 0

    def _get_plan(self) -> _Plan:
        if self._plan is None:
            idx = self.index
            try:
                dtypes = tuple(idx.member_dtype(i) for i in range(len(idx.names)))
            except Exception as exc:
                _fail(self.uri, f"bad dtype in the index: {exc}", None)
            shapes = tuple(idx.member_shape(i) for i in range(len(idx.names)))
            nbytes = tuple(math.prod(s) * d.itemsize for s, d in zip(shapes, dtypes, strict=True))
            self._plan = _Plan(idx.keys, dtypes, shapes, nbytes)
        return self._plan

    def _check_rows(self, plan: _Plan) -> None:
        idx = self.index
        for key, shape, fortran in zip(plan.keys, plan.shapes, idx.fortran_order, strict=True):
            if not shape:
                raise ConfigError(f"rows=True needs arrays with an axis 0; member {key!r} of {self.uri} is 0-d")
            if fortran and len(shape) > 1:
                raise ConfigError(f"rows=True needs C-order arrays; member {key!r} of {self.uri} is stored in "
                                  "Fortran order (read it with rows=False)")  # fmt: skip
        lengths = {s[0] for s in plan.shapes}
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {s[0]}" for k, s in zip(plan.keys, plan.shapes, strict=True))
            raise ConfigError(f"rows=True needs every member to have the same length along axis 0; {self.uri} "
                              f"has {detail}")  # fmt: skip

    def _read(self, i: int) -> dict[str, np.ndarray]:
        return self._read_many([i])[0]

    def read_batch(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Samples ``indices`` in order, with the byte ranges of all of them fetched together."""
        idx = check_indices(self.uri, indices, len(self))
        try:
            return self._read_many(idx)
        except FormatError as exc:
            if self.on_error == "raise":
                raise
            for _ in idx:
                self._skip(exc)
            return []

    def _read_many(self, idx: list[int]) -> list[dict[str, np.ndarray]]:
        if not idx:
            return []
        if not self.rows:
            sample = self._whole()
            return [sample] + [dict(sample) for _ in idx[1:]]
        plan = self._get_plan()
        self._check_rows(plan)
        index = self.index
        # Nearby rows of each stored member become one block; get_ranges then merges the
        # blocks of neighbouring members, so a batch costs a few requests whatever its size.
        gap = self.store.options.coalesce_gap
        plans: list[tuple[int, list[tuple[int, int, list[int]]]]] = []
        ranges: list[tuple[int, int]] = []
        for m in range(len(plan.keys)):
            row_bytes = plan.nbytes[m] // plan.shapes[m][0] if plan.shapes[m][0] else 0
            if index.method[m] != _STORED or row_bytes == 0:
                continue
            base = int(index.data_offset[m] + index.npy_data_offset[m])
            blocks = row_blocks(base, row_bytes, idx, gap)
            plans.append((m, blocks))
            ranges.extend((base + first * row_bytes, count * row_bytes) for first, count, _ in blocks)
        views = iter(self.store.get_ranges(self.uri, ranges) if ranges else [])
        columns: dict[int, list[np.ndarray]] = {}
        for m, blocks in plans:
            column: list[np.ndarray] = [None] * len(idx)  # type: ignore[list-item]
            for first, count, members in blocks:
                block = array_from_buffer(next(views), plan.dtypes[m], (count, *plan.shapes[m][1:]))
                for pos in members:
                    column[pos] = block[idx[pos] - first, ...]
            columns[m] = column
        for m in range(len(plan.keys)):
            if m in columns:
                continue
            if index.method[m] == _STORED:  # rows of zero bytes
                columns[m] = [array_from_buffer(b"", plan.dtypes[m], plan.shapes[m][1:]) for _ in idx]
            else:
                full = self._inflated_member(m)
                columns[m] = [full[i, ...] for i in idx]
        return [{plan.keys[m]: columns[m][j] for m in range(len(plan.keys))} for j in range(len(idx))]

    def _inflated_member(self, m: int) -> np.ndarray:
        arr = self._inflated.get(m)
        if arr is None:
            index, plan = self.index, self._get_plan()
            (comp,) = self.store.get_ranges(self.uri, [(int(index.data_offset[m]), int(index.compressed_size[m]))])
            data = _inflate(self.uri, index, m, comp)
            arr = array_from_buffer(data, plan.dtypes[m], plan.shapes[m], bool(index.fortran_order[m]),
                                    offset=int(index.npy_data_offset[m]))
            self._inflated[m] = arr
        return arr

    def _whole(self) -> dict[str, np.ndarray]:
        if self._index is None:
            data = self.store.get(self.uri)
            view = memoryview(data)
            source = _Source(self.uri, len(view), None, view)
            self._index = _build_index(self.uri, len(view), None, source, self.max_header_size)
            index = self.index
            ranges = self._member_ranges(index)
            views = [view[o : o + n] for o, n in ranges]
        else:
            index = self.index
            ranges = self._member_ranges(index)
            wanted = [i for i, (_, n) in enumerate(ranges) if n]
            got = self.store.get_ranges(self.uri, [ranges[i] for i in wanted])
            views = [memoryview(b"")] * len(ranges)
            for i, v in zip(wanted, got, strict=True):
                views[i] = v
        plan = self._get_plan()
        out: dict[str, np.ndarray] = {}
        for m, key in enumerate(plan.keys):
            fortran = bool(index.fortran_order[m])
            if index.method[m] == _STORED:
                out[key] = array_from_buffer(views[m], plan.dtypes[m], plan.shapes[m], fortran)
            else:
                data = _inflate(self.uri, index, m, views[m])
                out[key] = array_from_buffer(data, plan.dtypes[m], plan.shapes[m], fortran,
                                             offset=int(index.npy_data_offset[m]))
        return out

    def _member_ranges(self, index: NpzIndex) -> list[tuple[int, int]]:
        """The bytes each member needs: its array data if stored, its compressed bytes if deflated."""
        plan = self._get_plan()
        ranges = []
        for m in range(len(index.names)):
            if index.method[m] == _STORED:
                ranges.append((int(index.data_offset[m] + index.npy_data_offset[m]), plan.nbytes[m]))
            else:
                ranges.append((int(index.data_offset[m]), int(index.compressed_size[m])))
        return ranges


def _inflate(uri: str, index: NpzIndex, m: int, comp: Any) -> bytes:
    """Inflate member ``m`` (raw deflate), checking its size and CRC-32."""
    usize, crc, name = int(index.file_size[m]), int(index.crc32[m]), index.names[m]
    where = int(index.data_offset[m])
    d = zlib.decompressobj(-15)
    try:
        # One byte more than the directory promises, so that a longer stream is noticed
        # without inflating an unbounded amount.
        out = d.decompress(comp, usize + 1)
        if len(out) == usize and not d.eof and d.unconsumed_tail:
            out += d.decompress(d.unconsumed_tail, 1)
    except zlib.error as exc:
        _fail(uri, f"member {name!r}: corrupt deflate data ({exc})", where)
    if len(out) != usize or not d.eof:
        what = "longer than" if len(out) > usize else "truncated before"
        _fail(uri, f"member {name!r}: deflate stream {what} the {usize} bytes the directory gives", where)
    actual = zlib.crc32(out)
    if actual != crc:
        _fail(uri, f"member {name!r}: CRC-32 mismatch (data {actual:#010x}, directory {crc:#010x})", where)
    return out


# ---------------------------------------------------------------------- writer


class _ZipWriter:
    """A minimal streaming zip writer: stored members with known CRC (no data descriptor,
    array data aligned to 64 bytes), deflated members streamed with a data descriptor."""

    def __init__(self, out: ObjectWriter) -> None:
        self._out = out
        self.offset = 0
        self._entries: list[tuple[bytes, int, int, int, int, int, int]] = []  # name, flags, method, crc, csize,
        # usize, lho

    def _write(self, data: Any) -> None:
        self.offset += self._out.write(data)

    def add_stored(self, name: str, pieces: Sequence[bytes | memoryview]) -> None:
        raw, flags = _encode_name(name)
        usize = sum(memoryview(p).nbytes for p in pieces)
        crc = 0
        for p in pieces:
            crc = zlib.crc32(p, crc)
        lho = self.offset
        extra = b""
        size_field = usize
        if usize > _ZIP64_LIMIT:
            extra = struct.pack("<HHQQ", 1, 16, usize, usize)
            size_field = _U32
        pad = -(lho + _LFH.size + len(raw) + len(extra)) % _DATA_ALIGN
        if pad:
            pad += _DATA_ALIGN if pad < 6 else 0
            extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, pad - 4, _DATA_ALIGN) + bytes(pad - 6)
        need = 45 if extra[:2] == b"\x01\x00" else 10
        self._write(_LFH.pack(_SIG_LFH, need, flags, _STORED, 0, _DOS_DATE_1980, crc, size_field, size_field,
                              len(raw), len(extra)) + raw + extra)  # fmt: skip
        for p in pieces:
            self._write(p)
        self._entries.append((raw, flags, _STORED, crc, usize, usize, lho))

    def add_deflated(self, name: str, pieces: Sequence[bytes | memoryview], level: int) -> None:
        raw, flags = _encode_name(name)
        flags |= _FLAG_DESCRIPTOR
        usize = sum(memoryview(p).nbytes for p in pieces)
        zip64 = usize * 1.05 + 1024 > _ZIP64_LIMIT  # sizes are only known afterwards: decide up front
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        lho = self.offset
        size_field = _U32 if zip64 else 0
        self._write(_LFH.pack(_SIG_LFH, 45 if zip64 else 20, flags, _DEFLATED, 0, _DOS_DATE_1980, 0,
                              size_field, size_field, len(raw), len(extra)) + raw + extra)  # fmt: skip
        start = self.offset
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        crc = 0
        for p in pieces:
            view = memoryview(p).cast("B")
            for i in range(0, len(view), _INFLATE_CHUNK):  # bounded memory for huge arrays
                chunk = view[i : i + _INFLATE_CHUNK]
                crc = zlib.crc32(chunk, crc)
                out = comp.compress(chunk)
                if out:
                    self._write(out)
        self._write(comp.flush())
        csize = self.offset - start
        if zip64:
            self._write(struct.pack("<4sLQQ", _SIG_DD, crc, csize, usize))
        else:
            self._write(struct.pack("<4sLLL", _SIG_DD, crc, csize, usize))
        self._entries.append((raw, flags, _DEFLATED, crc, csize, usize, lho))

    def finish(self) -> None:
        cd_offset = self.offset
        for raw, flags, method, crc, csize, usize, lho in self._entries:
            big = [v for v in (usize, csize, lho) if v > _ZIP64_LIMIT]
            extra = struct.pack(f"<HH{len(big)}Q", 1, 8 * len(big), *big) if big else b""
            need = 45 if big else (20 if method == _DEFLATED else 10)
            usize_f, csize_f, lho_f = (_U32 if v > _ZIP64_LIMIT else v for v in (usize, csize, lho))
            self._write(_CDH.pack(_SIG_CDH, (3 << 8) | need, need, flags, method, 0, _DOS_DATE_1980, crc, csize_f,
                                  usize_f, len(raw), len(extra), 0, 0, 0, 0o100644 << 16, lho_f) + raw + extra)
        cd_size = self.offset - cd_offset
        count = len(self._entries)
        if count >= _U16 or cd_size > _ZIP64_LIMIT or cd_offset > _ZIP64_LIMIT:
            rec = self.offset
            self._write(_EOCD64.pack(_SIG_EOCD64, _EOCD64.size - 12, (3 << 8) | 45, 45, 0, 0, count, count,
                                     cd_size, cd_offset))  # fmt: skip
            self._write(_EOCD64_LOCATOR.pack(_SIG_LOC, 0, rec, 1))
            count, cd_size, cd_offset = min(count, _U16), min(cd_size, _U32), min(cd_offset, _U32)
            if cd_offset > _ZIP64_LIMIT:
                cd_offset = _U32
            if cd_size > _ZIP64_LIMIT:
                cd_size = _U32
        self._write(_EOCD.pack(_SIG_EOCD, 0, 0, count, count, cd_size, cd_offset, 0))


def _encode_name(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf8"), _FLAG_UTF8


def _named_arrays(arrays: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Any]]:
    if isinstance(arrays, Mapping):
        items = list(arrays.items())
    elif isinstance(arrays, Sequence) and not isinstance(arrays, str | bytes):
        items = [(f"arr_{i}", a) for i, a in enumerate(arrays)]  # np.savez's names for positional arrays
    else:
        raise ConfigError(f"write_npz needs a dict of name -> array (got {type(arrays).__name__})")
    for key, _ in items:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"npz member names must be non-empty strings (got {key!r})")
    return items


def write_npz(uri: str, arrays: Mapping[str, Any] | Sequence[Any], *, store: Store | None = None,
              compress: bool = False, level: int = 6) -> None:
    """Write ``arrays`` as an .npz that ``np.load`` reads (member ``key + ".npy"`` per array).

    Streams through ``store.open_writer``: stored members go out as their header and a
    memoryview of the array's own buffer (no copy; array data aligned to 64 bytes in the
    file); with ``compress=True`` members are deflated at ``level`` (1-9), like
    ``np.savez_compressed``. A list of arrays is named ``arr_0``, ``arr_1``... as
    ``np.savez`` does.
    """
    if not isinstance(level, int) or not 0 <= level <= 9:
        raise ConfigError(f"level must be an int from 0 to 9 (got {level=})")
    items = _named_arrays(arrays)
    encoded = [(key + ".npy", array_to_npy_bytes(arr)) for key, arr in items]
    store = store if store is not None else store_for(uri)
    with store.open_writer(uri) as out:
        zw = _ZipWriter(out)
        for name, pieces in encoded:
            if compress:
                zw.add_deflated(name, pieces, level)
            else:
                zw.add_stored(name, pieces)
        zw.finish()


__all__ = [
    "MEMBER_HEAD_FETCH",
    "TAIL_FETCH",
    "NpzIndex",
    "NpzReader",
    "index_from_bytes",
    "read_npz_index",
    "write_npz",
]
