"""tf.train.Example coding without TensorFlow: values, specs, errors, fuzzing, and interop with TensorFlow.

The TensorFlow tests are marked ``slow`` and named ``*tensorflow*`` (select with ``-k tensorflow``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3dlio_loader.errors import ConfigError, FormatError
from s3dlio_loader.formats.example import (
    FeatureSpec,
    _decode_packed_varints,
    compile_features,
    decode_example,
    encode_example,
    messages,
)

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)


@pytest.fixture(scope="module")
def tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


# ---------------------------------------------------------------------- values


def test_round_trip_of_every_kind() -> None:
    ints = np.array([0, 1, -1, 127, 128, 300, -(1 << 63), (1 << 63) - 1] * 4, dtype=np.int64)
    sample = {
        "ints": ints,
        "one_int": 5,
        "flag": True,
        "floats": np.linspace(-1, 1, 100, dtype=np.float32),
        "one_float": 2.5,
        "f64": np.array([1.0, 2.0]),  # stored as float32, as TensorFlow does
        "text": "héllo",
        "blobs": [b"a", b"", bytes(range(256))],
        "str_array": np.array(["x", "yz"]),
        "matrix": np.arange(6, dtype=np.int32).reshape(2, 3),
        "empty": np.array([], dtype=np.int64),
    }
    out = decode_example(encode_example(sample))
    assert list(out) == sorted(sample)
    assert out["ints"].dtype == np.int64 and np.array_equal(out["ints"], ints)
    assert out["one_int"].tolist() == [5] and out["flag"].tolist() == [1]
    assert out["floats"].dtype == np.float32 and np.array_equal(out["floats"], sample["floats"])
    assert out["one_float"].tolist() == [2.5] and out["f64"].dtype == np.float32
    assert out["text"].dtype == object and out["text"].tolist() == ["héllo".encode()]
    assert out["blobs"].tolist() == sample["blobs"]
    assert out["str_array"].tolist() == [b"x", b"yz"]
    assert out["matrix"].tolist() == [0, 1, 2, 3, 4, 5]
    assert out["empty"].dtype == np.int64 and out["empty"].size == 0
    for value in out.values():
        assert value.flags.writeable  # torch.from_numpy warns on read-only arrays


def test_encoding_is_deterministic() -> None:
    assert encode_example({"b": 1, "a": b"x"}) == encode_example({"a": b"x", "b": 1})


@given(st.lists(INT64, max_size=200))
def test_int64_lists_decode_exactly(values: list[int]) -> None:
    out = decode_example(encode_example({"v": np.array(values, dtype=np.int64)}))
    assert out["v"].tolist() == values


@given(st.lists(INT64, min_size=1, max_size=300))
def test_vectorised_varint_decoder(values: list[int]) -> None:
    ex = messages().Example()
    ex.features.feature["v"].int64_list.value.extend(values)
    raw = ex.features.feature["v"].int64_list.SerializeToString()
    assert _decode_packed_varints(raw, len(values)).tolist() == values


@given(st.lists(st.floats(width=32, allow_nan=False), max_size=100),
       st.lists(st.binary(max_size=20), min_size=1, max_size=5))  # fmt: skip
def test_float_and_bytes_lists(floats: list[float], blobs: list[bytes]) -> None:
    out = decode_example(encode_example({"f": np.array(floats, dtype=np.float32), "b": blobs}))
    assert out["f"].tolist() == floats
    assert out["b"].tolist() == blobs


# ---------------------------------------------------------------------- specs


def test_spec_selects_types_and_shapes() -> None:
    data = encode_example({"image": b"jpeg", "label": 3, "vec": np.arange(8, dtype=np.float32),
                           "pairs": np.arange(6), "unused": 1.0})  # fmt: skip
    spec = {"image": ("bytes", ()), "label": ("int64", ()), "vec": ("float32", (2, 4)),
            "pairs": ("int64", (-1, 2)), "names": ("bytes", None, [b"a", "b"]),
            "w": ("float", (3,), 0.5)}  # fmt: skip
    out = decode_example(data, spec)
    assert list(out) == list(spec)
    assert out["image"] == b"jpeg"
    assert isinstance(out["label"], np.int64) and out["label"] == 3
    assert out["vec"].shape == (2, 4) and out["vec"].dtype == np.float32
    assert out["pairs"].shape == (3, 2)
    assert out["names"].tolist() == [b"a", b"b"]
    assert out["w"].tolist() == [0.5, 0.5, 0.5]
    out["w"][0] = 9  # a default is copied, never shared between samples
    assert decode_example(data, spec)["w"].tolist() == [0.5, 0.5, 0.5]
    compiled = compile_features(spec)
    assert all(isinstance(v, FeatureSpec) for v in compiled.values())
    assert decode_example(data, compiled)["label"] == 3


@pytest.mark.parametrize(("spec", "needle"), [
    ({"missing": "int64"}, "'missing' is missing"),
    ({"label": ("float32", ())}, "'label' is a int64_list"),
    ({"vec": ("float32", (3,))}, "'vec' has 8 values, expected 3"),
    ({"vec": ("float32", (-1, 3))}, "'vec' has 8 values"),
    ({"vec": ("float32", ())}, "'vec' has 8 values, expected 1"),
    ({"nokind": ("int64", ())}, "'nokind' has no value list"),
])  # fmt: skip
def test_spec_mismatch_is_format_error_naming_the_feature(spec: dict[str, Any], needle: str) -> None:
    ex = messages().Example.FromString(encode_example({"label": 1, "vec": np.zeros(8, np.float32)}))
    ex.features.feature["nokind"].SetInParent()
    with pytest.raises(FormatError, match=needle) as info:
        decode_example(ex.SerializeToString(), spec, uri="s3://b/k.tfrecord", offset=42)
    assert info.value.uri == "s3://b/k.tfrecord" and info.value.offset == 42 and info.value.format == "tfrecord"


def test_feature_without_kind_decodes_as_empty_without_spec() -> None:
    ex = messages().Example()
    ex.features.feature["nokind"].SetInParent()
    out = decode_example(ex.SerializeToString())
    assert out["nokind"].size == 0


@pytest.mark.parametrize("spec", [
    {"a": "complex"}, {"a": ("int64", "x")}, {"a": ("int64", (-1, -1))}, {"a": ("int64", (-2,))},
    {"a": ("int64", (2,), [1, 2, 3])}, {"a": ()}, {"a": ("int64", (), 0, 1)}, {1: "int64"}, [("a", "int64")],
])  # fmt: skip
def test_bad_specs_are_config_errors(spec: Any) -> None:
    with pytest.raises(ConfigError):
        compile_features(spec)


@pytest.mark.parametrize("value", [[], None, object(), np.array([1 + 2j]), [b"a", 1], 1 << 64,
                                   np.array([1 << 63], dtype=np.uint64), [1 << 70]])  # fmt: skip
def test_unencodable_values_are_config_errors(value: Any) -> None:
    with pytest.raises(ConfigError, match="'x'"):
        encode_example({"x": value})


def test_encode_rejects_non_dicts() -> None:
    with pytest.raises(ConfigError):
        encode_example([("a", 1)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_format_error(data: bytes) -> None:
    for spec in (None, {"a": "int64"}, {"a": ("float32", (2,), 0.0), "b": ("bytes", (), b"")}):
        try:
            out = decode_example(data, spec)
        except FormatError as exc:
            assert exc.format == "tfrecord"
        else:
            assert isinstance(out, dict)


_GOOD = encode_example({"a": np.arange(20), "b": b"payload", "c": np.ones(5, np.float32)})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 10))  # fmt: skip
def test_mutated_examples_decode_or_format_error(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_GOOD)
    for pos, value in edits:
        data[pos] = value
    for spec in (None, {"a": ("int64", (20,))}, {"b": ("bytes", ())}):
        with contextlib.suppress(FormatError):
            decode_example(bytes(data[: len(data) - cut]), spec)


# ---------------------------------------------------------------------- interop with TensorFlow


@pytest.mark.slow
def test_tensorflow_parses_our_examples(tf: Any) -> None:
    sample = {"image": b"\x00\xffjpeg", "label": 7, "vec": np.arange(4, dtype=np.float32),
              "ids": np.array([-5, 0, 1 << 40]), "tags": [b"a", b"bc"]}  # fmt: skip
    data = encode_example(sample)
    proto = tf.train.Example.FromString(data)
    assert list(proto.features.feature["ids"].int64_list.value) == [-5, 0, 1 << 40]
    parsed = tf.io.parse_single_example(data, {
        "image": tf.io.FixedLenFeature((), tf.string), "label": tf.io.FixedLenFeature((), tf.int64),
        "vec": tf.io.FixedLenFeature((4,), tf.float32), "ids": tf.io.VarLenFeature(tf.int64),
        "tags": tf.io.FixedLenFeature((2,), tf.string),
    })  # fmt: skip
    assert parsed["image"].numpy() == sample["image"] and parsed["label"].numpy() == 7
    assert parsed["vec"].numpy().tolist() == [0, 1, 2, 3]
    assert tf.sparse.to_dense(parsed["ids"]).numpy().tolist() == [-5, 0, 1 << 40]
    assert parsed["tags"].numpy().tolist() == [b"a", b"bc"]
    # Same bytes as TensorFlow's own deterministic serialization of the same message.
    assert proto.SerializeToString(deterministic=True) == data


@pytest.mark.slow
def test_we_decode_tensorflow_examples(tf: Any) -> None:
    feature = tf.train.Feature
    proto = tf.train.Example(features=tf.train.Features(feature={
        "b": feature(bytes_list=tf.train.BytesList(value=[b"x", b"yy"])),
        "f": feature(float_list=tf.train.FloatList(value=[0.5, -2.0, 3.25])),
        "i": feature(int64_list=tf.train.Int64List(value=list(range(-10, 30)))),
        "empty": feature(float_list=tf.train.FloatList(value=[])),
        "nokind": feature(),
    }))  # fmt: skip
    out = decode_example(proto.SerializeToString())
    assert out["b"].tolist() == [b"x", b"yy"]
    assert out["f"].dtype == np.float32 and out["f"].tolist() == [0.5, -2.0, 3.25]
    assert out["i"].tolist() == list(range(-10, 30))
    assert out["empty"].dtype == np.float32 and out["empty"].size == 0
    assert out["nokind"].size == 0
    typed = decode_example(proto.SerializeToString(), {"i": ("int64", (4, 10)), "b": ("bytes", (2,))})
    assert typed["i"].shape == (4, 10) and typed["b"].tolist() == [b"x", b"yy"]
