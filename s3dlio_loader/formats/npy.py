"""NPY: numpy ``.npy`` arrays, read without pickle or eval and written without copying the data.

Reading: the header is parsed by a small parser of the Python-literal subset that numpy
writes (strings, ints, booleans, tuples, lists, dicts); nothing is evaluated and object
arrays are refused. Array data is never copied: a sample is ``np.frombuffer`` over the
fetched bytes (or over a read-only memory map with ``mmap=True`` on file://). Arrays are
therefore **read-only**; call ``.copy()`` to get a writable one.

>>> import tempfile, numpy as np
>>> from s3dlio_loader.formats.npy import NpyReader, write_npy
>>> uri = f"file://{tempfile.mkdtemp()}/a.npy"
>>> write_npy(uri, np.arange(6, dtype="<i4").reshape(3, 2))
>>> NpyReader(uri)[0].tolist()
[[0, 1], [2, 3], [4, 5]]
>>> [r.tolist() for r in NpyReader(uri, rows=True).read_batch([2, 0])]
[[4, 5], [0, 1]]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap as mmaplib
import os
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import numpy as np

from ..errors import ConfigError, FormatError
from ..storage import Store, parse_uri, store_for
from .base import FormatIndex, OnError, Reader, check_indices

FORMAT = "npy"
MAGIC = b"\x93NUMPY"
#: Longest header dict accepted, in bytes. numpy writes ~128 bytes for plain dtypes; big
#: structured dtypes need more. Bounds the parser's work on hostile input.
MAX_HEADER_SIZE = 1 << 20
#: Bytes fetched by the first header request; a second request is made only for longer headers.
HEAD_FETCH = 4096
#: numpy pads the header so that the data starts at a multiple of this.
HEADER_ALIGN = 64
_GROWTH_AXIS_DIGITS = 21
_CACHED_HEADER_MAX = 4096
_MAX_DEPTH = 32  # nesting of tuples/lists in a header (structured dtypes nest a few levels)
_MAX_INT_DIGITS = 20  # int64 fits in 19 digits: longer literals are not a valid shape or size
_INT64_MAX = (1 << 63) - 1
_VERSIONS = {(1, 0): ("<H", 10, "latin1"), (2, 0): ("<I", 12, "latin1"), (3, 0): ("<I", 12, "utf8")}
# Kinds whose bytes are the values themselves (no pointers): what frombuffer can decode.
_PLAIN_KINDS = frozenset("biufcmMSUV")


# ---------------------------------------------------------------------- the header literal


class _BadLiteral(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


_WS = re.compile(r"[ \t\n\r\f\v]*")
_TOKEN = re.compile(
    r"""
    (?P<s>[uU]?'(?:[^'\\\n]|\\.)*'|[uU]?"(?:[^"\\\n]|\\.)*")
  | (?P<i>[-+]?[0-9]+[lL]?(?![A-Za-z0-9_]))
  | (?P<k>(?:True|False|None)(?![A-Za-z0-9_]))
  | (?P<p>[{}()\[\]:,])
    """,
    re.VERBOSE | re.ASCII,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t",
                   "a": "\a", "b": "\b", "f": "\f", "v": "\v"}  # fmt: skip
_KEYWORDS = {"True": True, "False": False, "None": None}


def _unescape(match: re.Match[str]) -> str:
    esc = match.group(1)
    if esc in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[esc]
    if esc[0] in "xuU":
        code = int(esc[1:], 16)
    elif esc[0] in "01234567":
        code = int(esc, 8)
    else:
        raise _BadLiteral(f"unsupported escape sequence \\{esc}", match.start())
    if code > 0x10FFFF:
        raise _BadLiteral(f"escape \\{esc} is not a Unicode code point", match.start())
    return chr(code)


class _LiteralParser:
    """Recursive descent over the literal subset numpy writes; never evaluates anything."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Any:
        value = self._value(0)
        end = _WS.match(self.text, self.pos)
        assert end is not None
        if end.end() != len(self.text):
            raise _BadLiteral("unexpected text after the literal", end.end())
        return value

    def _take(self) -> tuple[str, str, int]:
        ws = _WS.match(self.text, self.pos)
        assert ws is not None
        start = ws.end()
        m = _TOKEN.match(self.text, start)
        if m is None:
            what = "end of header" if start >= len(self.text) else repr(self.text[start : start + 10])
            raise _BadLiteral(f"unexpected {what}", start)
        self.pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        return kind, m.group(), start

    def _peek_punct(self) -> str:
        ws = _WS.match(self.text, self.pos)
        assert ws is not None
        start = ws.end()
        return self.text[start] if start < len(self.text) else ""

    def _value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _BadLiteral(f"literal nested deeper than {_MAX_DEPTH} levels", self.pos)
        kind, text, start = self._take()
        if kind == "s":
            body = text[2:-1] if text[0] in "uU" else text[1:-1]
            return _ESCAPE.sub(_unescape, body) if "\\" in body else body
        if kind == "i":
            digits = text.rstrip("lL")
            if len(digits.lstrip("+-")) > _MAX_INT_DIGITS:
                raise _BadLiteral("integer literal too long", start)
            return int(digits)
        if kind == "k":
            return _KEYWORDS[text]
        if text == "(":
            items, trailing_comma = self._sequence(")", depth)
            return items[0] if len(items) == 1 and not trailing_comma else tuple(items)
        if text == "[":
            return self._sequence("]", depth)[0]
        if text == "{":
            return self._dict(depth)
        raise _BadLiteral(f"unexpected {text!r}", start)

    def _sequence(self, close: str, depth: int) -> tuple[list[Any], bool]:
        items: list[Any] = []
        comma = False
        while True:
            if self._peek_punct() == close:
                self._take()
                return items, comma
            items.append(self._value(depth + 1))
            _, text, start = self._take()
            if text == close:
                return items, False
            if text != ",":
                raise _BadLiteral(f"expected ',' or {close!r}, found {text!r}", start)
            comma = True

    def _dict(self, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            if self._peek_punct() == "}":
                self._take()
                return out
            key_pos = self.pos
            key = self._value(depth + 1)
            if not isinstance(key, str):
                raise _BadLiteral("dict keys must be strings", key_pos)
            if key in out:
                raise _BadLiteral(f"duplicate key {key!r}", key_pos)
            _, text, start = self._take()
            if text != ":":
                raise _BadLiteral(f"expected ':', found {text!r}", start)
            out[key] = self._value(depth + 1)
            _, text, start = self._take()
            if text == "}":
                return out
            if text != ",":
                raise _BadLiteral(f"expected ',' or '}}', found {text!r}", start)


def parse_literal(text: str) -> Any:
    """Parse a Python literal of the subset found in .npy headers, without ``eval``.

    Raises ValueError on anything else (calls, names, operators, floats, deep nesting).

    >>> parse_literal("{'descr': '<f8', 'shape': (3,), 'fortran_order': False}")
    {'descr': '<f8', 'shape': (3,), 'fortran_order': False}
    """
    try:
        return _LiteralParser(text).parse()
    except _BadLiteral as exc:
        raise ValueError(f"{exc} at character {exc.pos}") from None


# ---------------------------------------------------------------------- descr -> dtype


class _BadDescr(Exception):
    pass


# What numpy writes for a plain dtype (dtype.str): byte order, kind letter, size, datetime unit.
_TYPESTR = re.compile(r"[<>|=]?([A-Za-z?])([0-9]{0,12})(\[[0-9]{0,12}[A-Za-z]{1,3}\])?", re.ASCII)


def _descr_to_dtype(descr: Any, depth: int = 0) -> np.dtype[Any]:
    """numpy's descr (str, list of fields, or (descr, shape)) -> dtype, validating every piece."""
    if depth > _MAX_DEPTH:
        raise _BadDescr("dtype nested too deeply")
    if isinstance(descr, str):
        m = _TYPESTR.fullmatch(descr)
        if m is None:
            raise _BadDescr(f"{descr!r} is not a numpy type string")
        if m.group(1) == "a":  # numpy 2 deprecates the alias (a warning); it means 'S'
            descr = descr.replace("a", "S", 1)
        return np.dtype(descr)
    if isinstance(descr, tuple):
        if len(descr) != 2:
            raise _BadDescr("a sub-array descr is (descr, shape)")
        return np.dtype((_descr_to_dtype(descr[0], depth + 1), _check_subshape(descr[1])))
    if not isinstance(descr, list):
        raise _BadDescr(f"descr must be a string or a list of fields (got {type(descr).__name__})")
    names: list[str] = []
    titles: list[str | None] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    offset = 0
    for field in descr:
        if not isinstance(field, tuple) or len(field) not in (2, 3):
            raise _BadDescr("a structured field is (name, descr) or (name, descr, shape)")
        name, sub = field[0], _descr_to_dtype(field[1], depth + 1)
        if len(field) == 3:
            sub = np.dtype((sub, _check_subshape(field[2])))
        if name == "" and sub.type is np.void and sub.names is None:
            offset += sub.itemsize  # padding written by numpy for aligned/offset structs
            continue
        if isinstance(name, tuple) and len(name) == 2 and all(isinstance(x, str) for x in name):
            title, name = name
        elif isinstance(name, str):
            title = None
        else:
            raise _BadDescr("a field name is a string or a (title, name) pair")
        names.append(name)
        titles.append(title)
        formats.append(sub)
        offsets.append(offset)
        offset += sub.itemsize
    return np.dtype({"names": names, "formats": formats, "titles": titles, "offsets": offsets,
                     "itemsize": offset})  # fmt: skip


def _check_subshape(shape: Any) -> int | tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    if not isinstance(dims, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in dims):
        raise _BadDescr(f"a sub-array shape must be a tuple of ints >= 0 (got {shape!r})")
    return shape


def _plain(dtype: np.dtype[Any]) -> bool:
    if dtype.fields:
        return all(_plain(f[0]) for f in dtype.fields.values())
    if dtype.subdtype is not None:
        return _plain(dtype.subdtype[0])
    return dtype.kind in _PLAIN_KINDS


@functools.lru_cache(maxsize=1024)
def _dtype_for(descr: str) -> np.dtype[Any]:
    """The dtype of a canonical descr string (a type string, or the literal of a field list)."""
    try:
        value = parse_literal(descr) if descr[:1] in ("[", "(") else descr
        dtype = _descr_to_dtype(value)
    except _BadDescr:
        raise
    except RecursionError:
        raise _BadDescr("dtype nested too deeply") from None
    except Exception as exc:  # numpy refuses many malformed descrs, with various exception types
        raise _BadDescr(f"invalid dtype descr {descr[:200]!r}: {exc}") from None
    if dtype.hasobject or not _plain(dtype):
        raise _BadDescr(
            f"dtype {dtype} holds Python objects or pointers; such arrays need pickle, which is refused"
        )
    if dtype.subdtype is not None:
        raise _BadDescr(f"a sub-array dtype {dtype} cannot be the dtype of a whole array")
    return dtype


def dtype_from_descr(descr: str) -> np.dtype[Any]:
    """The dtype named by an index's ``descr`` string (see :class:`NpyIndex`).

    Raises:
        ValueError: ``descr`` is malformed or names an object dtype.
    """
    try:
        return _dtype_for(descr)
    except _BadDescr as exc:
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------- header


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What an .npy header says. ``data_offset`` is where the array bytes start."""

    version: tuple[int, int]
    header_len: int
    data_offset: int
    descr: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of array data after the header."""
        return self.count * self.dtype.itemsize


def _header_fields(raw: bytes, encoding: str) -> tuple[str, np.dtype[Any], tuple[int, ...], bool]:
    """(descr, dtype, shape, fortran_order) of a header dict's bytes.

    Headers of up to ``_CACHED_HEADER_MAX`` bytes are cached: the files of a dataset usually
    share their header byte for byte, and parsing costs more than reading a small file.
    Raises _BadLiteral with the offset of the problem in ``raw``.
    """
    if len(raw) <= _CACHED_HEADER_MAX:
        return _header_fields_cached(raw, encoding)
    return _parse_header_fields(raw, encoding)


def _parse_header_fields(raw: bytes, encoding: str) -> tuple[str, np.dtype[Any], tuple[int, ...], bool]:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _BadLiteral(f"header is not valid UTF-8: {exc.reason}", exc.start) from None
    try:
        header = _LiteralParser(text).parse()
    except _BadLiteral as exc:
        # A character offset equals the byte offset for latin-1; close enough for UTF-8 headers.
        raise _BadLiteral(f"malformed header: {exc}", exc.pos) from None
    except RecursionError:
        raise _BadLiteral("malformed header: nested too deeply", 0) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        keys = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise _BadLiteral(f"header must be a dict with keys 'descr', 'fortran_order', 'shape' (got {keys})", 0)
    shape, fortran, descr_value = header["shape"], header["fortran_order"], header["descr"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise _BadLiteral(f"header 'shape' must be a tuple of ints >= 0 (got {shape!r})", 0)
    if not isinstance(fortran, bool):
        raise _BadLiteral(f"header 'fortran_order' must be True or False (got {fortran!r})", 0)
    if isinstance(descr_value, str):
        descr = descr_value
    elif isinstance(descr_value, list | tuple):
        descr = repr(descr_value)  # canonical literal: parse_literal reads it back
    else:
        raise _BadLiteral(f"header 'descr' must be a string or a list (got {type(descr_value).__name__})", 0)
    try:
        dtype = _dtype_for(descr)
    except _BadDescr as exc:
        raise _BadLiteral(str(exc), 0) from None
    if math.prod(shape) * max(dtype.itemsize, 1) > _INT64_MAX:
        raise _BadLiteral(f"shape {shape} of {dtype} is larger than any array can be", 0)
    return descr, dtype, shape, fortran


_header_fields_cached = functools.lru_cache(maxsize=256)(_parse_header_fields)


def _fail(uri: str, message: str, offset: int | None) -> NoReturn:
    raise FormatError(message, uri=uri, format=FORMAT, offset=offset)


def npy_preamble(buf: bytes | memoryview, *, uri: str = "<bytes>", base: int = 0,
                 max_header_size: int = MAX_HEADER_SIZE) -> tuple[tuple[int, int], int, int]:
    """``(version, header_len, data_offset)`` from the first 10-12 bytes of an .npy file.

    ``base`` is the byte offset of ``buf`` in the object (for error messages).

    Raises:
        FormatError: bad magic, unknown version, a header longer than ``max_header_size``,
            or fewer bytes than the preamble needs.
    """
    head = bytes(buf[:12])
    if head[:6] != MAGIC[: len(head[:6])]:
        _fail(uri, f"not an .npy file (magic {head[:6]!r}, expected {MAGIC!r})", base)
    if len(head) < 8:
        _fail(uri, f"truncated: {len(head)} bytes, an .npy preamble needs at least 10", base + len(head))
    version = (head[6], head[7])
    spec = _VERSIONS.get(version)
    if spec is None:
        _fail(uri, f"unsupported .npy format version {version[0]}.{version[1]} (known: 1.0, 2.0, 3.0)",
              base + 6)
    fmt, prefix, _ = spec
    if len(head) < prefix:
        _fail(uri, f"truncated: {len(head)} bytes, a version {version[0]}.0 preamble needs {prefix}",
              base + len(head))
    (header_len,) = struct.unpack_from(fmt, head, 8)
    if header_len > max_header_size:
        _fail(uri, f"header of {header_len} bytes exceeds max_header_size={max_header_size}", base + 8)
    return version, header_len, prefix + header_len


def parse_npy_header(buf: bytes | memoryview, *, uri: str = "<bytes>", base: int = 0,
                     max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """Parse the header at the start of ``buf`` (which must hold at least the whole header).

    Nothing is evaluated: the header dict is read by a literal parser and the dtype built
    from validated pieces. ``base`` is ``buf``'s offset in the object, for error messages.

    Raises:
        FormatError: bad magic or version, malformed or truncated header, object dtype,
            bad shape.
    """
    version, header_len, data_offset = npy_preamble(buf, uri=uri, base=base, max_header_size=max_header_size)
    prefix = data_offset - header_len
    if len(buf) < data_offset:
        _fail(uri, f"truncated: the header ends at byte {data_offset}, only {len(buf)} bytes present",
              base + len(buf))
    try:
        descr, dtype, shape, fortran = _header_fields(bytes(buf[prefix:data_offset]), _VERSIONS[version][2])
    except _BadLiteral as exc:
        _fail(uri, str(exc), base + prefix + exc.pos)
    return NpyHeader(version, header_len, data_offset, descr, dtype, shape, fortran)


# ---------------------------------------------------------------------- arrays from bytes


def array_from_buffer(buf: Any, dtype: np.dtype[Any], shape: Sequence[int], fortran_order: bool = False,
                      offset: int = 0) -> np.ndarray:
    """A read-only array over ``buf[offset:]`` without copying (``np.frombuffer``)."""
    count = math.prod(shape)
    if count == 0 or dtype.itemsize == 0:
        out = np.empty(tuple(shape), dtype, order="F" if fortran_order else "C")
        out.flags.writeable = False
        return out
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    if fortran_order:
        return flat.reshape(tuple(shape)[::-1]).T
    return flat.reshape(tuple(shape))


def row_blocks(base: int, row_bytes: int, idx: Sequence[int], gap: int) -> list[tuple[int, int, list[int]]]:
    """Rows ``idx`` of ``row_bytes`` each from byte ``base``, merged into ``(first row, rows, positions
    in idx)`` blocks where the gap between rows is at most ``gap`` bytes."""
    blocks: list[tuple[int, int, list[int]]] = []
    for pos in sorted(range(len(idx)), key=idx.__getitem__):
        row = idx[pos]
        if blocks:
            first, count, members = blocks[-1]
            if (row - first - count) * row_bytes <= gap:
                blocks[-1] = (first, max(count, row - first + 1), members)
                members.append(pos)
                continue
        blocks.append((row, 1, [pos]))
    return blocks


def rows_from_store(store: Store, uri: str, base: int, row_bytes: int, dtype: np.dtype[Any],
                    row_shape: tuple[int, ...], idx: Sequence[int]) -> list[np.ndarray]:
    """Rows ``idx`` of a C-order array whose data starts at ``base``: nearby rows are fetched as one
    block (one range of ``store.get_ranges``) and every row is a view of its block's array."""
    blocks = row_blocks(base, row_bytes, idx, store.options.coalesce_gap)
    views = store.get_ranges(uri, [(base + first * row_bytes, count * row_bytes) for first, count, _ in blocks])
    out: list[np.ndarray] = [None] * len(idx)  # type: ignore[list-item]
    for (first, count, members), view in zip(blocks, views, strict=True):
        block = array_from_buffer(view, dtype, (count, *row_shape))
        for pos in members:
            out[pos] = block[idx[pos] - first, ...]
    return out


# ---------------------------------------------------------------------- index and reader


@dataclasses.dataclass(frozen=True, eq=False)
class NpyIndex(FormatIndex):
    """Where an .npy object's array lives.

    Attributes:
        version: format major version (1, 2 or 3).
        header_len: length of the header dict text (with its padding and newline).
        data_offset: byte offset of the array data (preamble + header).
        descr: numpy's dtype descr: a type string such as ``'<f8'``, or for structured
            dtypes the literal of the field list (read back by :func:`dtype_from_descr`).
        shape: int64 array.
        fortran_order: data stored column-major.
        nbytes: bytes of array data.
    """

    version: int
    header_len: int
    data_offset: int
    descr: str
    shape: np.ndarray
    fortran_order: bool
    nbytes: int

    @classmethod
    def from_header(cls, uri: str, size: int, etag: str | None, header: NpyHeader) -> NpyIndex:
        """The index of an object of ``size`` bytes whose header is ``header``.

        Raises:
            FormatError: the object is shorter than the header says.
        """
        end = header.data_offset + header.nbytes
        if size < end:
            _fail(uri, f"truncated: shape {header.shape} of {header.dtype} needs {end} bytes, the object "
                       f"has {size}", size)  # fmt: skip
        return cls(uri=uri, size=size, etag=etag, version=header.version[0], header_len=header.header_len,
                   data_offset=header.data_offset, descr=header.descr,
                   shape=np.asarray(header.shape, dtype=np.int64).reshape(-1),
                   fortran_order=header.fortran_order, nbytes=header.nbytes)  # fmt: skip

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype."""
        try:
            return _dtype_for(self.descr)
        except _BadDescr as exc:
            raise FormatError(str(exc), uri=self.uri, format=FORMAT, offset=None) from None

    @property
    def shape_tuple(self) -> tuple[int, ...]:
        """The shape as a tuple of Python ints."""
        return tuple(int(d) for d in self.shape)


def read_npy_index(uri: str, *, store: Store | None = None, storage_options: Mapping[str, Any] | None = None,
                   max_header_size: int = MAX_HEADER_SIZE) -> NpyIndex:
    """Build the index of one .npy object: a stat, then one range request for the header
    (``HEAD_FETCH`` bytes; a second only when the header is longer)."""
    store = store if store is not None else store_for(uri, storage_options)
    info = store.stat(uri)
    head = store.get_range(uri, 0, min(HEAD_FETCH, info.size))
    _, _, data_offset = npy_preamble(head, uri=uri, max_header_size=max_header_size)
    if data_offset > len(head):
        if data_offset > info.size:
            _fail(uri, f"truncated: the header ends at byte {data_offset}, the object has {info.size}",
                  info.size)
        head = head + store.get_range(uri, len(head), data_offset - len(head))
    header = parse_npy_header(head, uri=uri, max_header_size=max_header_size)
    return NpyIndex.from_header(uri, info.size, info.etag, header)


class NpyReader(Reader):
    """Samples of one .npy object: the whole array (default) or its rows.

    Args:
        uri: the .npy object.
        rows: ``False``: one sample, the whole array. ``True``: sample ``i`` is ``arr[i]``
            (C-order arrays of at least one dimension); each row is a range read and
            :meth:`read_batch` coalesces nearby rows into few requests.
        mmap: file:// only: memory-map the file read-only instead of reading through the
            Store; samples are views of the map (no read at all until touched). Do not
            truncate a file while a reader maps it.
        max_header_size: longest header accepted, in bytes.
        index, store, storage_options, on_error: see :class:`~s3dlio_loader.formats.base.Reader`.

    Arrays are read-only views of the fetched bytes (no copy); ``.copy()`` one to write to it.
    In whole-array mode without an index, the first read fetches the whole object with one
    GET and builds the index from it (its ``etag`` is then None).

    >>> import tempfile, numpy as np
    >>> uri = f"file://{tempfile.mkdtemp()}/m.npy"
    >>> write_npy(uri, np.zeros((4, 3), np.float32))
    >>> r = NpyReader(uri, rows=True)
    >>> len(r), r[1].shape, r.index.data_offset
    (4, (3,), 128)
    """

    format: ClassVar[str] = FORMAT

    def __init__(
        self,
        uri: str,
        *,
        rows: bool = False,
        mmap: bool = False,
        max_header_size: int = MAX_HEADER_SIZE,
        index: FormatIndex | None = None,
        store: Store | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if index is not None and not isinstance(index, NpyIndex):
            raise ConfigError(f"NpyReader needs an NpyIndex (got {type(index).__name__}) for {uri}")
        if index is not None and index.uri != uri:
            raise ConfigError(f"the index given was built for {index.uri}, not {uri}")
        if mmap and parse_uri(uri).scheme != "file":
            raise ConfigError(f"mmap=True needs a file:// URI (got {uri!r}); leave mmap=False for other storage")
        if not isinstance(max_header_size, int) or max_header_size < 1:
            raise ConfigError(f"max_header_size must be a positive int (got {max_header_size=})")
        super().__init__(uri, index=index, store=store, storage_options=storage_options, on_error=on_error)
        self.rows = bool(rows)
        self.mmap = bool(mmap)
        self.max_header_size = max_header_size
        self._map: mmaplib.mmap | None = None
        self._mapped: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_map"] = state["_mapped"] = None  # a worker maps the file itself
        return state

    @property
    def index(self) -> NpyIndex:
        """The object's index (built on first use)."""
        idx = super().index
        assert isinstance(idx, NpyIndex)
        return idx

    def build_index(self) -> NpyIndex:
        """Read the header: from the map with ``mmap=True``, else a stat and one range request."""
        if self.mmap:
            return self._map_file()[0]
        return read_npy_index(self.uri, store=self.store, max_header_size=self.max_header_size)

    def __len__(self) -> int:
        if not self.rows:
            return 1
        idx = self.index
        self._check_rows(idx)
        return int(idx.shape[0])

    def _check_rows(self, idx: NpyIndex) -> None:
        if idx.shape.size == 0:
            raise ConfigError(f"rows=True needs an array with an axis 0; {self.uri} holds a 0-d array "
                              "(read it with rows=False)")  # fmt: skip
        if idx.fortran_order and idx.shape.size > 1:
            raise ConfigError(
                f"rows=True needs a C-order array; {self.uri} is stored in Fortran order (shape "
                f"{idx.shape_tuple}), so its rows are not contiguous. Read it whole (rows=False) and "
                "index it, or rewrite it with np.ascontiguousarray."
            )

    def _read(self, i: int) -> np.ndarray:
        return self._read_many([i])[0]

    def read_batch(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Samples ``indices`` in order; in rows mode the rows' ranges are fetched together
        (``store.get_ranges`` merges nearby ones into one request)."""
        idx = check_indices(self.uri, indices, len(self))
        try:
            return self._read_many(idx)
        except FormatError as exc:
            if self.on_error == "raise":
                raise
            for _ in idx:
                self._skip(exc)
            return []

    def _read_many(self, idx: list[int]) -> list[np.ndarray]:
        if not idx:
            return []
        if self.mmap:
            full = self._map_file()[1]
            return [full[i, ...] for i in idx] if self.rows else [full] * len(idx)
        if not self.rows:
            return [self._whole()] * len(idx)
        index = self.index
        self._check_rows(index)
        dtype = index.dtype
        row_shape = index.shape_tuple[1:]
        row_bytes = math.prod(row_shape) * dtype.itemsize
        if row_bytes == 0:
            return [array_from_buffer(b"", dtype, row_shape) for _ in idx]
        return rows_from_store(self.store, self.uri, index.data_offset, row_bytes, dtype, row_shape, idx)

    def _whole(self) -> np.ndarray:
        index = self._index
        if index is None:
            data = self.store.get(self.uri)
            header = parse_npy_header(data, uri=self.uri, max_header_size=self.max_header_size)
            index = NpyIndex.from_header(self.uri, len(data), None, header)
            self._index = index
        else:
            assert isinstance(index, NpyIndex)
            if index.nbytes == 0:
                return array_from_buffer(b"", index.dtype, index.shape_tuple, index.fortran_order)
            data = self.store.get(self.uri, size=index.size)
            if len(data) < index.data_offset + index.nbytes:
                _fail(self.uri, f"the object is {len(data)} bytes, its index expects {index.size}; it "
                                "changed since the index was built", len(data))  # fmt: skip
        return array_from_buffer(data, index.dtype, index.shape_tuple, index.fortran_order,
                                 offset=index.data_offset)

    def _map_file(self) -> tuple[NpyIndex, np.ndarray]:
        if self._map is not None and self._mapped is not None and self._index is not None:
            assert isinstance(self._index, NpyIndex)
            return self._index, self._mapped
        path = parse_uri(self.uri).path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                _fail(self.uri, "empty file: an .npy file holds at least a 10-byte preamble", 0)
            mm = mmaplib.mmap(f.fileno(), 0, access=mmaplib.ACCESS_READ)
        view = memoryview(mm)
        try:
            index = self._index
            if index is None:
                header = parse_npy_header(view, uri=self.uri, max_header_size=self.max_header_size)
                index = NpyIndex.from_header(self.uri, size, None, header)
            assert isinstance(index, NpyIndex)
            if size < index.data_offset + index.nbytes:
                _fail(self.uri, f"the file is {size} bytes, its index expects {index.size}", size)
            mapped = array_from_buffer(mm, index.dtype, index.shape_tuple, index.fortran_order,
                                       offset=index.data_offset)
        finally:
            view.release()
        self._map, self._mapped, self._index = mm, mapped, index
        return index, mapped


# ---------------------------------------------------------------------- writer


def _header_bytes(dtype: np.dtype[Any], shape: tuple[int, ...], fortran_order: bool) -> bytes:
    if dtype.hasobject or not _plain(dtype):
        raise ConfigError(f"cannot write an array of dtype {dtype} to .npy without pickle; convert it to a "
                          "fixed-size dtype first (e.g. strings to 'U' or 'S')")  # fmt: skip
    descr = np.lib.format.dtype_to_descr(dtype)
    text = "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran_order, shape)  # noqa: UP031
    if shape:
        # As numpy does: room for the growth axis to reach 21 digits, so that appending to the
        # array can rewrite the header in place.
        text += " " * max(0, _GROWTH_AXIS_DIGITS - len(repr(shape[-1 if fortran_order else 0])))
    versions: tuple[tuple[int, int], ...]
    try:
        encoded, versions = text.encode("latin1"), ((1, 0), (2, 0))
    except UnicodeEncodeError:
        encoded, versions = text.encode("utf8"), ((3, 0),)
    for version in versions:
        fmt, prefix, _ = _VERSIONS[version]
        # Pad with 1..HEADER_ALIGN spaces so that the data starts on a HEADER_ALIGN boundary
        # (numpy's layout, byte for byte), then end with '\n'.
        hlen = len(encoded) + 1
        hlen += HEADER_ALIGN - (prefix + hlen) % HEADER_ALIGN
        if hlen < (1 << (8 * struct.calcsize(fmt))):
            return MAGIC + bytes(version) + struct.pack(fmt, hlen) + encoded + b" " * (hlen - len(encoded) - 1) \
                + b"\n"
    raise ConfigError(f"the header of dtype {dtype} is too long for the .npy format")  # pragma: no cover


def array_to_npy_bytes(arr: Any) -> list[bytes | memoryview]:
    """The .npy encoding of ``arr`` as ``[header, data]`` without copying the data.

    For a C- or Fortran-contiguous array the data piece is a memoryview of the array's own
    buffer; a non-contiguous array is copied once into C order. The pieces can be passed to
    ``writer.write`` one after the other, or to ``b"".join`` when one buffer is wanted.

    >>> a = np.arange(3, dtype="<i2")
    >>> header, data = array_to_npy_bytes(a)
    >>> len(header), bytes(data)
    (128, b'\\x00\\x00\\x01\\x00\\x02\\x00')
    >>> np.shares_memory(np.frombuffer(data, np.uint8), a)
    True
    """
    arr = np.asarray(arr)
    if arr.flags.c_contiguous:
        fortran, flat = False, arr
    elif arr.flags.f_contiguous:
        fortran, flat = True, arr.T  # numpy writes F-contiguous arrays as fortran_order=True
    else:
        fortran, flat = False, np.ascontiguousarray(arr)
    header = _header_bytes(arr.dtype, tuple(int(d) for d in arr.shape), fortran)
    if flat.nbytes == 0:
        return [header]
    data = memoryview(flat.reshape(-1).view(np.uint8))
    return [header, data]


def write_npy(uri: str, arr: Any, *, store: Store | None = None) -> None:
    """Write ``arr`` as an .npy object that ``np.load`` reads, through ``store.open_writer``
    (header, then the array's own buffer: no joined copy)."""
    store = store if store is not None else store_for(uri)
    pieces = array_to_npy_bytes(arr)
    with store.open_writer(uri) as writer:
        for piece in pieces:
            writer.write(piece)


__all__ = [
    "HEAD_FETCH",
    "MAX_HEADER_SIZE",
    "NpyHeader",
    "NpyIndex",
    "NpyReader",
    "array_from_buffer",
    "array_to_npy_bytes",
    "dtype_from_descr",
    "npy_preamble",
    "parse_literal",
    "parse_npy_header",
    "read_npy_index",
    "row_blocks",
    "rows_from_store",
    "write_npy",
]

