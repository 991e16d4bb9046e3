"""``tf.train.Example`` encoding and decoding without TensorFlow.

The messages are those of TensorFlow's ``tensorflow/core/example/example.proto`` and
``feature.proto`` (same field numbers and wire types), declared at runtime in a private
protobuf descriptor pool and parsed by the ``protobuf`` library's C (upb) parser, so the
bytes are checked by a maintained parser. They live in a private pool so that importing
TensorFlow in the same process never conflicts with them.

Decoded values are numpy arrays:

* ``int64_list`` -> ``int64``, ``float_list`` -> ``float32``,
* ``bytes_list`` -> an ``object`` array whose items are ``bytes``.

A ``features`` spec selects, types and shapes features (anything not named is left out)::

    {"image": "bytes",                 # variable length: 1-D array
     "label": ("int64", ()),           # scalar: np.int64 (bytes for "bytes")
     "vec": ("float32", (128,)),       # fixed shape, validated and reshaped
     "mask": ("int64", (-1, 2)),       # one -1: inferred from the number of values
     "w": ("float32", (), 1.0),        # a default used when the feature is missing
     "z": ("float32", (4,), 0.0)}      # a single default value fills a fixed shape

Dtypes are ``"bytes"`` (alias ``"string"``), ``"int64"`` and ``"float32"`` (alias
``"float"``). A shape ``()`` gives a scalar (a numpy scalar, or ``bytes``); any other shape
gives a writable ndarray. A missing feature (or one whose value list is not set) raises
:class:`~s3dlio_loader.errors.FormatError` naming it unless the spec has a default; a
value count that does not fit the shape, or a list of another type, raises too.

>>> from s3dlio_loader.formats.example import decode_example, encode_example
>>> data = encode_example({"label": 3, "vec": [0.5, 1.5], "name": b"cat"})
>>> ex = decode_example(data)
>>> ex["label"], ex["vec"], ex["name"]
(array([3]), array([0.5, 1.5], dtype=float32), array([b'cat'], dtype=object))
>>> decode_example(data, {"label": ("int64", ()), "name": ("bytes", ())})
{'label': np.int64(3), 'name': b'cat'}
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError, FormatError

FORMAT = "tfrecord"

#: Spec dtype names and their aliases -> canonical name.
DTYPES = {"bytes": "bytes", "string": "bytes", "str": "bytes", "int64": "int64", "int": "int64",
          "float32": "float32", "float": "float32"}  # fmt: skip
_KIND = {"bytes": "bytes_list", "int64": "int64_list", "float32": "float_list"}
_NUMPY: dict[str, np.dtype[Any]] = {
    "int64": np.dtype(np.int64), "float32": np.dtype(np.float32), "bytes": np.dtype(object)
}
# Below this many int64 values, iterating the repeated field beats the vectorised varint decode.
_VARINT_VECTOR_MIN = 16
_MISSING: Any = object()
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class FeatureSpec(NamedTuple):
    """One compiled entry of a ``features`` spec (see :func:`compile_features`).

    ``shape`` is None for a variable-length 1-D feature; ``default`` is :data:`NO_DEFAULT`
    when a missing feature is an error.
    """

    dtype: str
    shape: tuple[int, ...] | None
    default: Any


#: The ``default`` of a :class:`FeatureSpec` that has none.
NO_DEFAULT: Any = _MISSING


class CompiledFeatures(dict[str, FeatureSpec]):
    """A compiled ``features`` spec (from :func:`compile_features`): name -> :class:`FeatureSpec`,
    plus a per-feature conversion plan so that decoding does no spec work per record."""

    def __init__(self, specs: Mapping[str, FeatureSpec]) -> None:
        super().__init__(specs)
        self.plan = [(name, _KIND[spec.dtype], _converter(spec), spec) for name, spec in specs.items()]

    def __reduce__(self) -> tuple[Any, ...]:  # the plan holds closures: rebuild it after unpickling
        return (CompiledFeatures, (dict(self),))


# ---------------------------------------------------------------------- the messages


class _Messages(NamedTuple):
    Example: Any
    Features: Any
    Feature: Any


@functools.cache
def messages() -> _Messages:
    """The Example, Features and Feature message classes (built on first use)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    repeated, optional = fdp.LABEL_REPEATED, fdp.LABEL_OPTIONAL
    proto = descriptor_pb2.FileDescriptorProto(
        name="s3dlio_loader/tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str) -> Any:
        return proto.message_type.add(name=name)

    for name, ftype in (("BytesList", fdp.TYPE_BYTES), ("FloatList", fdp.TYPE_FLOAT),
                        ("Int64List", fdp.TYPE_INT64)):  # fmt: skip
        field = message(name).field.add(name="value", number=1, type=ftype, label=repeated)
        if ftype != fdp.TYPE_BYTES:
            field.options.packed = True
    feature = message("Feature")
    feature.oneof_decl.add(name="kind")
    for number, (fname, tname) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        feature.field.add(name=fname, number=number, type=fdp.TYPE_MESSAGE, label=optional,
                          type_name=f".tensorflow.{tname}", oneof_index=0)  # fmt: skip
    features = message("Features")
    features.field.add(name="feature", number=1, type=fdp.TYPE_MESSAGE, label=repeated,
                       type_name=".tensorflow.Features.FeatureEntry")  # fmt: skip
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=fdp.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=fdp.TYPE_MESSAGE, label=optional,
                    type_name=".tensorflow.Feature")  # fmt: skip
    message("Example").field.add(name="features", number=1, type=fdp.TYPE_MESSAGE, label=optional,
                                 type_name=".tensorflow.Features")  # fmt: skip

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)

    def cls(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))

    return _Messages(cls("Example"), cls("Features"), cls("Feature"))


# ---------------------------------------------------------------------- the spec


def compile_features(spec: Mapping[str, Any]) -> CompiledFeatures:
    """Check a ``features`` spec and turn it into :class:`FeatureSpec` entries.

    Each value is a dtype name, ``(dtype, shape)`` or ``(dtype, shape, default)``; shape is
    None (variable length), ``()`` (scalar) or a tuple of sizes with at most one ``-1``.

    Raises:
        ConfigError: an unknown dtype, a bad shape, or a default that does not fit the shape.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"features must be a dict of name -> spec (got {type(spec).__name__})")
    if isinstance(spec, CompiledFeatures):
        return spec
    out: dict[str, FeatureSpec] = {}
    for name, value in spec.items():
        if not isinstance(name, str):
            raise ConfigError(f"feature names must be strings (got {name!r})")
        if isinstance(value, FeatureSpec):
            out[name] = value
            continue
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, tuple | list) or not 1 <= len(value) <= 3:
            raise ConfigError(
                f"feature {name!r}: spec must be 'dtype', (dtype, shape) or (dtype, shape, default) "
                f"(got {value!r})"
            )
        dtype = DTYPES.get(str(value[0]).lower()) if isinstance(value[0], str) else None
        if dtype is None:
            raise ConfigError(f"feature {name!r}: dtype must be one of {sorted(DTYPES)} (got {value[0]!r})")
        shape = _check_shape(name, value[1] if len(value) > 1 else None)
        default = _check_default(name, dtype, shape, value[2]) if len(value) > 2 else _MISSING
        out[name] = FeatureSpec(dtype, shape, default)
    return CompiledFeatures(out)


def _check_shape(name: str, shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, int | np.integer):
        shape = (int(shape),)
    if not isinstance(shape, tuple | list) or not all(isinstance(d, int | np.integer) for d in shape):
        raise ConfigError(f"feature {name!r}: shape must be None or a tuple of ints (got {shape!r})")
    dims = tuple(int(d) for d in shape)
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise ConfigError(f"feature {name!r}: shape sizes must be >= 0, with at most one -1 (got {dims!r})")
    return dims


def _check_default(name: str, dtype: str, shape: tuple[int, ...] | None, default: Any) -> Any:
    if default is None:
        return _MISSING
    if dtype == "bytes":
        items = [default] if isinstance(default, bytes | str) else list(default)
        values = np.empty(len(items), dtype=object)
        values[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in items]
    else:
        values = np.asarray(default, dtype=_NUMPY[dtype]).reshape(-1)
    if len(values) == 1 and shape and -1 not in shape:  # one value fills a fixed shape
        values = np.full(math.prod(shape), values[0], dtype=_NUMPY[dtype])
    try:
        return _shape_values(values, shape)
    except _ShapeMismatch as exc:
        raise ConfigError(f"feature {name!r}: default does not fit the shape: {exc}") from None


class _ShapeMismatch(Exception):
    pass


def _shape_values(values: np.ndarray, shape: tuple[int, ...] | None) -> Any:
    """1-D ``values`` in the spec's shape (scalars unwrapped), or _ShapeMismatch."""
    if shape is None:
        return values
    n = len(values)
    if shape == ():
        if n != 1:
            raise _ShapeMismatch(f"has {n} values, expected 1 (shape ())")
        return values[0]
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if (known == 0 and n != 0) or (known and n % known):
            raise _ShapeMismatch(f"has {n} values, which do not fill shape {shape}")
        shape = tuple(n // known if d == -1 and known else (0 if d == -1 else d) for d in shape)
    elif n != math.prod(shape):
        raise _ShapeMismatch(f"has {n} values, expected {math.prod(shape)} (shape {shape})")
    return values.reshape(shape)


# ---------------------------------------------------------------------- decoding


def decode_example(
    data: bytes,
    features: Mapping[str, Any] | None = None,
    *,
    uri: str = "<bytes>",
    offset: int | None = None,
) -> dict[str, Any]:
    """A serialized ``tf.train.Example`` as a dict of numpy values.

    Without ``features`` every feature is returned as a 1-D array (keys sorted); a feature
    whose value list is not set comes back as an empty float32 array. With ``features``
    (a spec as in the module docstring, or the output of :func:`compile_features`) only
    those are returned, typed and shaped, in the spec's order.

    ``uri`` and ``offset`` only label errors (the record's object and byte offset).

    Raises:
        FormatError: the bytes are not an Example, or a feature does not match the spec.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    try:
        msg = messages().Example.FromString(data)
    except Exception as exc:  # protobuf's DecodeError, or any surprise from the C parser
        raise FormatError(f"not a tf.train.Example: {exc}", uri=uri, format=FORMAT, offset=offset) from None
    fmap = msg.features.feature
    if features is None:
        return {name: _values(fmap[name])[1] for name in sorted(fmap)}
    specs = features if isinstance(features, CompiledFeatures) else compile_features(features)
    out: dict[str, Any] = {}
    get = fmap.get
    for name, kind, convert, spec in specs.plan:
        feature = get(name)
        found = feature.WhichOneof("kind") if feature is not None else None
        if found != kind:
            if found is not None:
                raise FormatError(f"feature {name!r} is a {found}, but the spec asks for {spec.dtype}",
                                  uri=uri, format=FORMAT, offset=offset)  # fmt: skip
            if spec.default is _MISSING:
                what = "is missing" if feature is None else "has no value list"
                raise FormatError(f"feature {name!r} {what} and its spec has no default",
                                  uri=uri, format=FORMAT, offset=offset)  # fmt: skip
            default = spec.default
            out[name] = default.copy() if isinstance(default, np.ndarray) else default
            continue
        try:
            out[name] = convert(feature)
        except _ShapeMismatch as exc:
            raise FormatError(f"feature {name!r} {exc}", uri=uri, format=FORMAT, offset=offset) from None
    return out


def _converter(spec: FeatureSpec) -> Callable[[Any], Any]:
    """feature -> value in the spec's type and shape (raising _ShapeMismatch)."""
    kind, shape = _KIND[spec.dtype], spec.shape
    if shape == ():  # scalars skip the array: the common label/id/image-bytes case
        scalar = {"bytes": bytes, "int64": np.int64, "float32": np.float32}[spec.dtype]

        def one(feature: Any) -> Any:
            values = getattr(feature, kind).value
            if len(values) != 1:
                raise _ShapeMismatch(f"has {len(values)} values, expected 1 (shape ())")
            return scalar(values[0])

        return one
    return lambda feature: _shape_values(_convert(feature, kind), shape)


def _values(feature: Any) -> tuple[str | None, np.ndarray]:
    kind = feature.WhichOneof("kind")
    if kind is None:
        return None, np.empty(0, dtype=np.float32)
    return kind, _convert(feature, kind)


def _convert(feature: Any, kind: str) -> np.ndarray:
    if kind == "float_list":
        # The packed wire form is the float32 array itself: one C call instead of a Python
        # iteration over the repeated field (30x faster at 1000 values).
        lst = feature.float_list
        n = len(lst.value)
        raw = lst.SerializeToString()
        return np.frombuffer(bytearray(raw), dtype="<f4", offset=len(raw) - 4 * n, count=n).astype(
            np.float32, copy=False
        )
    if kind == "int64_list":
        v = feature.int64_list.value
        n = len(v)
        if n < _VARINT_VECTOR_MIN:
            return np.fromiter(v, dtype=np.int64, count=n)
        return _decode_packed_varints(feature.int64_list.SerializeToString(), n)
    v = feature.bytes_list.value
    out = np.empty(len(v), dtype=object)
    out[:] = list(v)
    return out


def _decode_packed_varints(raw: bytes, n: int) -> np.ndarray:
    """The ``n`` int64 values of a serialized, packed Int64List (well formed: protobuf wrote it)."""
    # Skip the field tag and the payload's length varint.
    pos = 1
    while raw[pos] & 0x80:
        pos += 1
    b = np.frombuffer(raw, dtype=np.uint8, offset=pos + 1)
    ends = np.flatnonzero(b < 0x80)
    starts = np.empty(n, dtype=np.intp)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    within = np.arange(len(b)) - np.repeat(starts, ends - starts + 1)
    parts = (b & 0x7F).astype(np.uint64) << (within.astype(np.uint64) * np.uint64(7))
    # The 7-bit groups of one varint never overlap, so their sum is their bitwise OR.
    return np.add.reduceat(parts, starts).view(np.int64)


# ---------------------------------------------------------------------- encoding


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize a dict as a ``tf.train.Example`` (deterministic: features in key order).

    Values map to lists as TensorFlow users expect:

    * ``bytes``/``str`` (UTF-8), or a list of them, or an array of kind ``S``/``U``/``O``
      -> ``bytes_list``;
    * ``int``/``bool``/numpy integers, or an integer/bool array or list -> ``int64_list``;
    * ``float``/numpy floats, or a float array or list -> ``float_list`` (as float32).

    Arrays are flattened (the shape is not stored: give it in the reader's spec). An empty
    list is ambiguous: pass a typed empty array (``np.array([], np.int64)``).

    >>> len(encode_example({"x": 1})) > 0
    True

    Raises:
        ConfigError: a value of no supported type, an empty untyped list, or an integer
            outside int64.
    """
    if not isinstance(features, Mapping):
        raise ConfigError(f"an Example is a dict of feature name -> values (got {type(features).__name__})")
    msg = messages().Example()
    fmap = msg.features.feature
    for name, value in features.items():
        if not isinstance(name, str):
            raise ConfigError(f"Example feature names must be strings (got {name!r})")
        kind, values = _kind_and_values(name, value)
        lst = getattr(fmap[name], kind)
        lst.SetInParent()  # an empty list still sets the kind, as TensorFlow writes it
        lst.value.extend(values)
    data: bytes = msg.SerializeToString(deterministic=True)
    return data


def _kind_and_values(name: str, value: Any) -> tuple[str, list[Any]]:
    if isinstance(value, bytes | bytearray | memoryview | str):
        return "bytes_list", [_as_bytes(value)]
    if isinstance(value, bool | int | np.integer | np.bool_):
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise ConfigError(f"feature {name!r}: value {int(value)} does not fit in int64")
        return "int64_list", [int(value)]
    if isinstance(value, float | np.floating):
        return "float_list", [float(value)]
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(
                f"feature {name!r}: an empty list has no type; pass np.array([], np.int64), "
                "np.array([], np.float32) or np.array([], object) for bytes"
            )
        textual = [isinstance(v, bytes | bytearray | memoryview | str) for v in value]
        if all(textual):
            return "bytes_list", [_as_bytes(v) for v in value]
        if any(textual):
            raise ConfigError(f"feature {name!r}: a list mixes bytes/str with other values")
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        if flat.dtype.kind in "biu":
            return "int64_list", _int64_list(name, flat)
        if flat.dtype.kind == "f":
            return "float_list", flat.astype(np.float32).tolist()
        if flat.dtype.kind in "SUO":
            items = flat.tolist()
            if all(isinstance(v, bytes | bytearray | memoryview | str) for v in items):
                return "bytes_list", [_as_bytes(v) for v in items]
    raise ConfigError(
        f"feature {name!r}: cannot encode a {type(value).__name__} "
        f"{'(dtype ' + str(value.dtype) + ') ' if isinstance(value, np.ndarray) else ''}"
        "as an Example feature; use bytes/str, ints or floats (scalars, lists or numpy arrays)"
    )


def _as_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _int64_list(name: str, values: np.ndarray) -> list[int]:
    if values.dtype.kind == "u" and values.size and int(values.max()) > _INT64_MAX:
        raise ConfigError(f"feature {name!r}: value {int(values.max())} does not fit in int64")
    out: list[int] = values.astype(np.int64).tolist()
    return out


__all__ = [
    "DTYPES",
    "NO_DEFAULT",
    "CompiledFeatures",
    "FeatureSpec",
    "compile_features",
    "decode_example",
    "encode_example",
    "messages",
]
