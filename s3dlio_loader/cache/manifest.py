"""Manifest files <-> object tables: JSON Lines and Parquet, converted with pyarrow (no per-row Python).

A manifest lists objects with their sizes, so a dataset starts without listing storage. One
object per entry, with the fields ``uri`` (str), ``size`` (int), and optionally ``etag``
(str), ``mtime`` (float seconds) and ``samples`` (int: samples the object holds for the
format and options the dataset uses; when every entry has it, a dataset needs no request at
all to start). Two encodings:

* **JSON Lines** (any extension but ``.parquet``/``.pq``): ``{"uri": "s3://b/x.npz", "size": 123}``
  per line. Parsed by ``pyarrow.json`` in C++ (multi-threaded); about 100 bytes per object.
* **Parquet** (``.parquet``, ``.pq``): the same columns; several times smaller and faster to
  read, the compact choice for 10^7 objects.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import FormatError
from .table import ObjectTable, common_prefix

_ETAG_CHUNK_ROWS = 1 << 16


def manifest_format(uri: str) -> str:
    """``"parquet"`` for ``.parquet``/``.pq`` names, else ``"jsonl"``."""
    return "parquet" if uri.lower().endswith((".parquet", ".pq")) else "jsonl"


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("uri", pa.large_string()), ("size", pa.int64()), ("etag", pa.large_string()),
                      ("mtime", pa.float64()), ("samples", pa.int64())])  # fmt: skip


# ---------------------------------------------------------------------- reading


def parse_manifest(data: bytes, uri: str) -> tuple[ObjectTable, np.ndarray | None]:
    """The objects (and sample counts, when every entry has one) of a manifest's bytes.

    Raises:
        FormatError: an entry without ``uri``/``size``, a value of the wrong type, a negative
            size or count, ``samples`` on some entries only, or bytes that do not parse
            (JSON Lines errors name the line).
    """
    import pyarrow as pa

    if manifest_format(uri) == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"not a Parquet manifest ({exc})", uri=uri, format="manifest") from None
        return _from_arrow(table, uri, "row")
    if not data.strip():
        return ObjectTable.from_columns([]), None
    import pyarrow.json as pj

    try:
        table = pj.read_json(pa.BufferReader(data),
                             parse_options=pj.ParseOptions(explicit_schema=_schema(),
                                                           unexpected_field_behavior="ignore"))  # fmt: skip
        return _from_arrow(table, uri, "line")
    except (pa.ArrowException, FormatError):
        return _parse_lines(data, uri)  # slower, and names the offending line


def _from_arrow(table: Any, uri: str, unit: str) -> tuple[ObjectTable, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    names = set(table.column_names)
    for required in ("uri", "size"):
        if required not in names:
            raise FormatError(f"the manifest has no {required!r} column", uri=uri, format="manifest")
    n = table.num_rows

    def column(name: str, typ: Any) -> Any:
        if name not in names:
            return None
        try:
            return table.column(name).cast(typ).combine_chunks()
        except pa.ArrowException as exc:
            raise FormatError(f"column {name!r} is not {typ} ({exc})", uri=uri, format="manifest") from None

    def first(mask: Any) -> int:
        return int(pc.index(mask, True).as_py()) + 1

    uris = column("uri", pa.large_string())
    sizes = column("size", pa.int64())
    if uris.null_count:
        raise FormatError(f"{unit} {first(pc.is_null(uris))}: an entry without a uri", uri=uri, format="manifest")
    if sizes.null_count:
        raise FormatError(f"{unit} {first(pc.is_null(sizes))}: an entry without a size", uri=uri, format="manifest")
    size_arr = sizes.to_numpy()
    if n and size_arr.min() < 0:
        raise FormatError(f"{unit} {int(np.argmax(size_arr < 0)) + 1}: negative size", uri=uri, format="manifest")
    etags = column("etag", pa.large_string())
    mtimes = column("mtime", pa.float64())
    samples = column("samples", pa.int64())
    counts: np.ndarray | None = None
    if samples is not None and samples.null_count < n:
        if samples.null_count:
            raise FormatError(f"{unit} {first(pc.is_null(samples))}: 'samples' is given for some entries only",
                              uri=uri, format="manifest")  # fmt: skip
        counts = samples.to_numpy().astype(np.int64, copy=False)
        if counts.min() < 0:
            raise FormatError(f"{unit} {int(np.argmax(counts < 0)) + 1}: negative samples", uri=uri,
                              format="manifest")  # fmt: skip
    mtime_arr = np.full(n, np.nan) if mtimes is None else mtimes.to_numpy(zero_copy_only=False).astype(np.float64)
    return table_from_arrow(uris, size_arr.astype(np.int64, copy=False), etags, mtime_arr), counts


def table_from_arrow(uris: Any, sizes: np.ndarray, etags: Any | None, mtimes: np.ndarray) -> ObjectTable:
    """An ObjectTable from a pyarrow large_string array of URIs (no nulls), sizes, etags (nullable) and mtimes."""
    import pyarrow.compute as pc

    n = len(uris)
    if n == 0:
        return ObjectTable.from_columns([])
    bounds = pc.min_max(uris)
    prefix = common_prefix(bounds["min"].as_py(), bounds["max"].as_py())
    cut = len(prefix.encode("utf-8"))
    offsets, data = _buffers(uris)
    base = int(offsets[0])
    rel_offsets = offsets - base - cut * np.arange(n + 1, dtype=np.int64)
    segment = data[base : int(offsets[-1])]
    width = int(offsets[1] - offsets[0])
    if cut and np.all(np.diff(offsets) == width):  # URIs of one length (numbered shards): a 2-D slice
        rel = segment.reshape(n, width)[:, cut:].copy().reshape(-1)
    elif cut:
        keep = np.ones(len(segment), dtype=bool)
        starts = offsets[:-1] - base
        for k in range(cut):  # drop the prefix bytes of every entry (cut passes over n positions)
            keep[starts + k] = False
        rel = segment[keep]
    else:
        rel = segment.copy()
    return ObjectTable(prefix, rel, rel_offsets, sizes, _fixed_width(etags, n), mtimes)


def _buffers(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets [n + 1], uint8 data) of a large_string array (zero-copy views)."""
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _fixed_width(arr: Any | None, n: int) -> np.ndarray:
    """A nullable large_string array as fixed-width bytes (``b""`` for null)."""
    import pyarrow.compute as pc

    if arr is None or arr.null_count == n:
        return np.zeros(n, dtype="S1")
    lengths = pc.fill_null(pc.binary_length(arr), 0).to_numpy().astype(np.int64)
    width = max(1, int(lengths.max()))
    offsets, data = _buffers(arr)
    starts = offsets[:-1]
    if arr.null_count == 0 and np.all(lengths == width) and np.all(np.diff(offsets) == width):
        s = int(offsets[0])
        return data[s : s + n * width].copy().view(f"S{width}")  # one contiguous block: reinterpret
    out = np.zeros((n, width), dtype=np.uint8)
    cols = np.arange(width, dtype=np.int64)
    for a in range(0, n, _ETAG_CHUNK_ROWS):
        b = min(n, a + _ETAG_CHUNK_ROWS)
        mask = cols[None, :] < lengths[a:b, None]
        idx = starts[a:b, None] + cols[None, :]
        block = out[a:b]
        block[mask] = data[idx[mask]]
    return out.view(f"S{width}").reshape(n)


def _parse_lines(data: bytes, uri: str) -> tuple[ObjectTable, np.ndarray | None]:
    uris: list[str] = []
    sizes: list[int] = []
    etags: list[str | None] = []
    mtimes: list[float | None] = []
    samples: list[int | None] = []
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("not an object")
            u, s = row["uri"], row["size"]
            if not isinstance(u, str) or not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise TypeError(f"uri must be a string and size an integer >= 0 (got {u!r}, {s!r})")
            e, m, k = row.get("etag"), row.get("mtime"), row.get("samples")
            if e is not None and not isinstance(e, str):
                raise TypeError(f"etag must be a string (got {e!r})")
            if m is not None and (not isinstance(m, int | float) or isinstance(m, bool)):
                raise TypeError(f"mtime must be a number (got {m!r})")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
                raise TypeError(f"samples must be an integer >= 0 (got {k!r})")
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"line {lineno}: not a manifest entry ({exc})", uri=uri, format="manifest") from None
        uris.append(u)
        sizes.append(s)
        etags.append(e)
        mtimes.append(None if m is None else float(m))
        samples.append(k)
    given = [k for k in samples if k is not None]
    if given and len(given) != len(samples):
        raise FormatError("'samples' is given for some entries only", uri=uri, format="manifest")
    counts = np.asarray(given, dtype=np.int64) if given else None
    return ObjectTable.from_columns(uris, sizes, etags, mtimes), counts


# ---------------------------------------------------------------------- writing


def serialize_manifest(table: ObjectTable, samples: np.ndarray | None, fmt: str) -> bytes:
    """The bytes of a manifest of ``table`` (``fmt``: ``"jsonl"`` or ``"parquet"``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(table)
    large = pa.large_string()
    uris = _full_uris(table)
    etags = _etags_arrow(table.etags) if n and bool(np.any(table.etags != b"")) else None
    has_mtime = bool(n and not np.all(np.isnan(table.mtimes)))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        columns: dict[str, Any] = {"uri": uris, "size": pa.array(np.asarray(table.sizes), pa.int64())}
        if etags is not None:
            columns["etag"] = etags
        if has_mtime:
            columns["mtime"] = pa.array(np.asarray(table.mtimes), pa.float64(), from_pandas=True)
        if samples is not None:
            columns["samples"] = pa.array(np.asarray(samples), pa.int64())
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink, compression="zstd")
        return bytes(sink.getvalue().to_pybytes())
    def needs(col: Any, chars: str) -> bool:
        return bool(n) and bool(pc.any(pc.match_substring_regex(col, f"[{chars}]")).as_py())

    if needs(uris, "\\x00-\\x1f") or (etags is not None and needs(etags, "\\x00-\\x1f")):
        return _lines_slow(table, samples)  # control characters need JSON escapes

    def s(text: str) -> Any:
        return pa.scalar(text, large)

    def escape(col: Any) -> Any:
        if not needs(col, '"\\\\'):
            return col
        return pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')

    parts = [s('{"uri": "'), escape(uris), s('", "size": '), pc.cast(pa.array(np.asarray(table.sizes)), large)]
    if etags is not None:
        parts.append(pc.fill_null(pc.binary_join_element_wise(s(', "etag": "'), escape(etags), s('"'), s("")),
                                  s(', "etag": null')))  # fmt: skip
    if has_mtime:
        mt = pa.array(np.asarray(table.mtimes), pa.float64(), from_pandas=True)
        parts.append(pc.fill_null(pc.binary_join_element_wise(s(', "mtime": '), pc.cast(mt, large), s("")), s("")))
    if samples is not None:
        parts += [s(', "samples": '), pc.cast(pa.array(np.asarray(samples), pa.int64()), large)]
    parts.append(s("}\n"))
    if not n:
        return b""
    lines = pc.binary_join_element_wise(*parts, s(""))
    offsets, data = _buffers(lines)
    return data[int(offsets[0]) : int(offsets[-1])].tobytes()


def _etags_arrow(etags: np.ndarray) -> Any:
    """Fixed-width bytes as a large_string array (null for empty), built from buffers."""
    import pyarrow as pa

    n = len(etags)
    width = etags.dtype.itemsize
    lengths = np.char.str_len(etags).astype(np.int64)
    grid = np.ascontiguousarray(etags).view(np.uint8).reshape(n, width)
    data = grid.reshape(-1) if np.all(lengths == width) else grid[np.arange(width)[None, :] < lengths[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    valid = np.packbits(lengths > 0, bitorder="little")
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)),
                                            pa.py_buffer(valid))  # fmt: skip


def _full_uris(table: ObjectTable) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(table)
    large = pa.large_string()
    offsets = np.ascontiguousarray(table.uri_offsets - table.uri_offsets[0], dtype=np.int64)
    rel = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(
        table.uri_data[int(table.uri_offsets[0]) : int(table.uri_offsets[-1])])))  # fmt: skip
    if not table.prefix:
        return rel
    return pc.binary_join_element_wise(pa.scalar(table.prefix, large), rel, pa.scalar("", large))


def _lines_slow(table: ObjectTable, samples: np.ndarray | None) -> bytes:
    out = []
    for k, o in enumerate(table):
        row: dict[str, Any] = {"uri": o.uri, "size": o.size, "etag": o.etag}
        if o.mtime is not None:
            row["mtime"] = o.mtime
        if samples is not None:
            row["samples"] = int(samples[k])
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode() if out else b""


__all__ = ["manifest_format", "parse_manifest", "serialize_manifest", "table_from_arrow"]
