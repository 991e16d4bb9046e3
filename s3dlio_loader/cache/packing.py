"""Many format indexes of one kind packed into a few flat arrays.

A format index (:class:`~s3dlio_loader.formats.base.FormatIndex`) is a frozen dataclass of
numpy arrays and scalars. An :class:`IndexPack` stores the indexes of all ``n`` objects of a
dataset column by column, so that 10^6 Parquet footers or TFRecord offset tables are a
handful of arrays (memory-mappable, shared by every process) instead of millions of Python
objects; :meth:`IndexPack.get` rebuilds one object's index on demand, its arrays zero-copy
views of the packed ones.

Column kinds, per dataclass field:

* ``array``: every value an ndarray of one dtype and rank: the values raveled and
  concatenated (``data``), ``offsets`` (``n + 1``) and, unless 1-D, ``shapes`` (``n x ndim``);
* ``int`` / ``float`` / ``bool``: one value per object;
* ``json``: any other scalar (str, None, tuples of str...) as dictionary-encoded JSON text:
  ``codes`` into the distinct ``texts``;
* ``ref``: the ``uri``, ``size`` or ``etag`` field when it equals the object table's column
  (nothing stored).

Values that fit none of these (object arrays, mixed kinds) make the pack fail with
:class:`UnpackableError`; the cache then keeps those indexes in memory only.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..storage import ObjectInfo
from .table import ObjectTable, ragged_take

_REF_FIELDS = ("uri", "size", "etag")
_INT64 = np.iinfo(np.int64)


class UnpackableError(Exception):
    """The indexes cannot be packed into flat arrays (the cache keeps them in memory instead)."""


@dataclass
class _Column:
    kind: str
    dtype: str = ""
    ndim: int = 1
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class IndexPack:
    """The indexes of ``n`` objects (row ``i`` is object ``i`` of an :class:`ObjectTable`; rows may be absent)."""

    def __init__(self, cls_path: str, columns: dict[str, _Column], present: np.ndarray) -> None:
        self.cls_path = cls_path
        self.columns = columns
        self.present = present

    def __len__(self) -> int:
        return int(self.present.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed arrays."""
        return int(self.present.nbytes + sum(a.nbytes for c in self.columns.values() for a in c.arrays.values()))

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, indexes: Sequence[Any], infos: Sequence[ObjectInfo]) -> IndexPack:
        """Pack ``indexes`` (None for an absent row); ``infos`` are the objects the rows describe.

        Raises:
            UnpackableError: no index given, mixed classes, or a field that fits no column kind.
        """
        present_list = [x is not None for x in indexes]
        first = next((x for x in indexes if x is not None), None)
        if first is None or not dataclasses.is_dataclass(first):
            raise UnpackableError("nothing packable")
        kind_cls: Any = type(first)
        if any(x is not None and type(x) is not kind_cls for x in indexes):
            raise UnpackableError("indexes of different classes")
        present = np.array(present_list, dtype=bool)
        columns: dict[str, _Column] = {}
        for f in dataclasses.fields(kind_cls):
            values = [getattr(x, f.name) if x is not None else None for x in indexes]
            columns[f.name] = _build_column(f.name, values, present_list, infos)
        return cls(f"{kind_cls.__module__}:{kind_cls.__qualname__}", columns, present)

    # ------------------------------------------------------------------ read

    def get(self, i: int, table: ObjectTable) -> Any:
        """The index of row ``i`` (None when absent); ``table`` is the object table the rows follow."""
        if not self.present[i]:
            return None
        values: dict[str, Any] = {}
        for name, col in self.columns.items():
            a = col.arrays
            kind = col.kind
            if kind == "array":
                off = a["offsets"]
                v = a["data"][int(off[i]) : int(off[i + 1])]
                if col.ndim != 1:
                    v = v.reshape(tuple(int(d) for d in a["shapes"][i])) if col.ndim else v.reshape(())
                values[name] = v
            elif kind == "int":
                values[name] = int(a["values"][i])
            elif kind == "float":
                values[name] = float(a["values"][i])
            elif kind == "bool":
                values[name] = bool(a["values"][i])
            elif kind == "json":
                code = int(a["codes"][i])
                to = a["text_offsets"]
                values[name] = _tuples(json.loads(a["texts"][int(to[code]) : int(to[code + 1])].tobytes()))
            else:  # ref
                values[name] = _ref_value(name, table, i)
        kind_cls = resolve_class(self.cls_path)
        from_dict = getattr(kind_cls, "from_dict", None)
        return from_dict(values) if callable(from_dict) else kind_cls(**values)

    def field_names(self) -> tuple[str, ...]:
        """The dataclass fields this pack holds, in order."""
        return tuple(self.columns)

    def compatible(self) -> bool:
        """True when the index class still exists and has exactly the packed fields."""
        try:
            kind_cls = resolve_class(self.cls_path)
        except UnpackableError:
            return False
        return tuple(f.name for f in dataclasses.fields(kind_cls)) == self.field_names()

    # ------------------------------------------------------------------ combine

    def take(self, rows: np.ndarray) -> IndexPack:
        """Rows ``rows`` of this pack, as a pack of ``len(rows)`` rows."""
        rows = np.asarray(rows, dtype=np.int64)
        return IndexPack(self.cls_path, {k: _take(c, rows) for k, c in self.columns.items()}, self.present[rows])

    @staticmethod
    def merge(n: int, parts: Sequence[tuple[np.ndarray, IndexPack]], table: ObjectTable) -> IndexPack:
        """One pack of ``n`` rows from ``parts``: row ``k`` of ``parts[j][1]`` becomes row ``parts[j][0][k]``.

        ``table`` is the object table of the result (``ref`` columns that must become stored
        columns take their values from it). The parts must cover every row exactly once.

        Raises:
            UnpackableError: the parts hold different index classes or incompatible columns.
        """
        parts = [(np.asarray(rows, dtype=np.int64), p) for rows, p in parts if len(rows)]
        if not parts:
            raise UnpackableError("nothing to merge")
        cls_path = parts[0][1].cls_path
        names = parts[0][1].field_names()
        if any(p.cls_path != cls_path or p.field_names() != names for _, p in parts):
            raise UnpackableError("packs of different index classes")
        order = np.concatenate([rows for rows, _ in parts])
        if len(order) != n:
            raise ValueError(f"merge: the parts hold {len(order)} rows, not {n}")
        perm = np.full(n, -1, dtype=np.int64)
        perm[order] = np.arange(n, dtype=np.int64)
        if np.any(perm < 0):
            raise ValueError("merge: the parts do not cover every row exactly once")
        present = np.concatenate([p.present for _, p in parts])[perm]
        columns: dict[str, _Column] = {}
        for name in names:
            cols = [p.columns[name] for _, p in parts]
            kinds = {c.kind for c in cols}
            if len(kinds) > 1:
                if "array" in kinds:
                    raise UnpackableError(f"field {name!r} is an array in some packs only")
                cols = [_as_json(name, c, rows, table) for (rows, _), c in zip(parts, cols, strict=True)]
            columns[name] = _take(_concat(name, cols), perm)
        return IndexPack(cls_path, columns, present)

    # ------------------------------------------------------------------ persistence

    def to_arrays(self, prefix: str = "ix") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) for a cache file."""
        meta = {
            "cls": self.cls_path,
            "fields": [[name, c.kind, c.dtype, c.ndim, sorted(c.arrays)] for name, c in self.columns.items()],
        }
        arrays = {f"{prefix}.present": self.present}
        for name, c in self.columns.items():
            for key, arr in c.arrays.items():
                arrays[f"{prefix}.{name}.{key}"] = arr
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = "ix") -> IndexPack:
        """Inverse of :meth:`to_arrays`."""
        columns = {}
        for name, kind, dtype, ndim, keys in meta["fields"]:
            columns[name] = _Column(kind, dtype, int(ndim), {k: arrays[f"{prefix}.{name}.{k}"] for k in keys})
        return cls(str(meta["cls"]), columns, arrays[f"{prefix}.present"])


# ---------------------------------------------------------------------- helpers


_classes: dict[str, type] = {}


def resolve_class(path: str) -> type:
    """The index class named ``module:qualname`` (only classes of this package are loaded)."""
    found = _classes.get(path)
    if found is not None:
        return found
    module, _, qualname = path.partition(":")
    if not module.startswith("s3dlio_loader.") or not qualname:
        raise UnpackableError(f"refusing to load index class {path!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UnpackableError(f"index class {path!r} is gone: {exc}") from None
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise UnpackableError(f"{path!r} is not a dataclass")
    _classes[path] = obj
    return obj


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise UnpackableError(str(exc)) from None


def _ref_value(name: str, table: ObjectTable, i: int) -> Any:
    if name == "uri":
        return table.uri(i)
    if name == "size":
        return int(table.sizes[i])
    e = table.etags[i]
    return e.decode() if e else None


def _info_value(name: str, info: ObjectInfo) -> Any:
    return info.uri if name == "uri" else info.size if name == "size" else info.etag


def _build_column(name: str, values: list[Any], present: list[bool], infos: Sequence[ObjectInfo]) -> _Column:
    n = len(values)
    live = [v for v, p in zip(values, present, strict=True) if p]
    if name in _REF_FIELDS and len(infos) == n and all(
        v == _info_value(name, o) for v, p, o in zip(values, present, infos, strict=True) if p
    ):
        return _Column("ref")
    if all(isinstance(v, np.ndarray) for v in live):
        dtypes = {v.dtype for v in live}
        ndims = {v.ndim for v in live}
        if len(dtypes) != 1 or len(ndims) != 1:
            raise UnpackableError(f"field {name!r}: arrays of different dtypes or ranks")
        dtype = dtypes.pop()
        ndim = ndims.pop()
        if dtype.hasobject or dtype.fields is not None:
            raise UnpackableError(f"field {name!r}: dtype {dtype} cannot be packed")
        lengths = np.fromiter((v.size if p else 0 for v, p in zip(values, present, strict=True)), np.int64, n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.concatenate([v.ravel() for v in live]) if live else np.zeros(0, dtype=dtype)
        arrays = {"data": data.astype(dtype, copy=False), "offsets": offsets}
        if ndim != 1:
            shapes = np.zeros((n, ndim), dtype=np.int64)
            for k, (v, p) in enumerate(zip(values, present, strict=True)):
                if p:
                    shapes[k] = v.shape
            arrays["shapes"] = shapes
        return _Column("array", dtype.str, ndim, arrays)
    if any(isinstance(v, np.ndarray) for v in live):
        raise UnpackableError(f"field {name!r} mixes arrays and scalars")
    if live and all(isinstance(v, bool | np.bool_) for v in live):
        return _Column("bool", arrays={"values": np.array([bool(v) if p else False for v, p in
                                                           zip(values, present, strict=True)], dtype=bool)})
    if live and all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
                    and _INT64.min <= int(v) <= _INT64.max for v in live):  # fmt: skip
        return _Column("int", arrays={"values": np.array([int(v) if p else 0 for v, p in
                                                          zip(values, present, strict=True)], dtype=np.int64)})
    if live and all(isinstance(v, float | np.floating) for v in live):
        return _Column("float", arrays={"values": np.array([float(v) if p else 0.0 for v, p in
                                                            zip(values, present, strict=True)], dtype=np.float64)})
    return _json_column([_dumps(v) if p else None for v, p in zip(values, present, strict=True)])


def _json_column(texts: Sequence[bytes | None]) -> _Column:
    uniques: dict[bytes, int] = {}
    codes = np.empty(len(texts), dtype=np.int64)
    for k, t in enumerate(texts):
        codes[k] = -1 if t is None else uniques.setdefault(t, len(uniques))
    blob = b"".join(uniques)
    lengths = np.fromiter(map(len, uniques), dtype=np.int64, count=len(uniques))
    offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _Column("json", arrays={"codes": codes, "texts": np.frombuffer(blob, dtype=np.uint8).copy(),
                                   "text_offsets": offsets})  # fmt: skip


def _as_json(name: str, col: _Column, rows: np.ndarray, table: ObjectTable) -> _Column:
    """A scalar column as a ``json`` column (``rows``: the result rows its rows become)."""
    if col.kind == "json":
        return col
    n = len(rows)
    if col.kind == "ref":
        return _json_column([_dumps(_ref_value(name, table, int(r))) for r in rows.tolist()])
    vals = col.arrays["values"].tolist()
    if len(vals) != n:
        raise ValueError(f"column {name!r}: {len(vals)} values for {n} rows")
    return _json_column([_dumps(v) for v in vals])


def _concat(name: str, cols: Sequence[_Column]) -> _Column:
    first = cols[0]
    kind = first.kind
    if kind == "ref":
        return _Column("ref")
    if kind in ("int", "float", "bool"):
        return _Column(kind, arrays={"values": np.concatenate([c.arrays["values"] for c in cols])})
    if kind == "array":
        if any(c.dtype != first.dtype or c.ndim != first.ndim for c in cols):
            raise UnpackableError(f"field {name!r}: arrays of different dtypes or ranks across packs")
        datas, offs, shapes = [], [], []
        base = 0
        for c in cols:
            o = c.arrays["offsets"]
            datas.append(c.arrays["data"][int(o[0]) : int(o[-1])])
            offs.append(o[1:] - o[0] + base)
            base += int(o[-1] - o[0])
            if "shapes" in c.arrays:
                shapes.append(c.arrays["shapes"])
        arrays = {"data": np.concatenate(datas), "offsets": np.concatenate([np.zeros(1, np.int64), *offs])}
        if shapes:
            arrays["shapes"] = np.concatenate(shapes)
        return _Column("array", first.dtype, first.ndim, arrays)
    # json: merge the dictionaries
    uniques: dict[bytes, int] = {}
    all_codes = []
    for c in cols:
        to = c.arrays["text_offsets"].tolist()
        blob = c.arrays["texts"].tobytes()
        remap = np.array([uniques.setdefault(blob[a:b], len(uniques)) for a, b in itertools.pairwise(to)] + [-1],
                         dtype=np.int64)  # fmt: skip
        all_codes.append(remap[c.arrays["codes"]])  # code -1 picks the trailing -1
    blob = b"".join(uniques)
    offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, uniques), np.int64, len(uniques)), out=offsets[1:])
    return _Column("json", arrays={"codes": np.concatenate(all_codes), "texts": np.frombuffer(blob, np.uint8).copy(),
                                   "text_offsets": offsets})  # fmt: skip


def _take(col: _Column, rows: np.ndarray) -> _Column:
    a = col.arrays
    if col.kind == "ref":
        return col
    if col.kind in ("int", "float", "bool"):
        return _Column(col.kind, arrays={"values": a["values"][rows]})
    if col.kind == "array":
        data, offsets = ragged_take(a["data"], a["offsets"], rows)
        out = {"data": data, "offsets": offsets}
        if "shapes" in a:
            out["shapes"] = a["shapes"][rows]
        return _Column("array", col.dtype, col.ndim, out)
    codes = a["codes"][rows]
    used = np.unique(codes[codes >= 0])
    new_code = np.full(len(a["text_offsets"]), -1, dtype=np.int64)  # one spare slot: index -1 stays -1
    new_code[used] = np.arange(len(used), dtype=np.int64)
    texts, text_offsets = ragged_take(a["texts"], a["text_offsets"], used)
    return _Column("json", arrays={"codes": new_code[codes], "texts": texts, "text_offsets": text_offsets})


__all__ = ["IndexPack", "UnpackableError", "resolve_class"]
