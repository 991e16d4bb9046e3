"""The state tree, dtypes, shard packing and manifest validation (no storage involved)."""

from __future__ import annotations

import collections
import itertools
import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3dlio_loader.checkpoint import CheckpointCorruptError, UnsupportedStateError
from s3dlio_loader.checkpoint import manifest as mf
from s3dlio_loader.checkpoint.dtypes import DTYPES, name_of_numpy
from s3dlio_loader.checkpoint.memory import adopt, crc32c
from s3dlio_loader.checkpoint.shards import DATA_ALIGNMENT, PADDING, parse_header, plan_shards
from s3dlio_loader.checkpoint.tree import flatten, unflatten


def roundtrip(state):
    tree, leaves = flatten(state)
    tree = json.loads(json.dumps(tree))  # what the manifest stores
    values = [leaf.data.view(np.dtype(leaf.dtype)).reshape(leaf.shape) if leaf.kind == "numpy" else leaf.data
              for leaf in leaves]
    return unflatten(tree, values), leaves


def test_plain_values_roundtrip_exactly():
    Point = collections.namedtuple("Point", ["x", "y"])
    state = {
        "none": None, "t": True, "f": False, "i": -(2**70), "zero": -0.0, "x": 0.1, "nan": math.nan, "inf": -math.inf,
        "s": "héllo \ud800", "tuple": (1, (2, [3])), "list": [], "nt": Point(1, "a"), 0: "int key", 1: {"deep": [{}]},
    }
    out, leaves = roundtrip(state)
    assert not leaves
    assert out.keys() == state.keys() and [type(k) for k in out] == [type(k) for k in state]
    assert math.isnan(out.pop("nan")) and math.isnan(state.pop("nan"))
    assert math.copysign(1, out["zero"]) == -1
    assert out == state
    assert type(out["tuple"]) is tuple and type(out["tuple"][1]) is tuple and type(out["tuple"][1][1]) is list
    assert type(out["nt"]).__name__ == "Point" and out["nt"].x == 1 and out["nt"]._fields == ("x", "y")


def test_ordered_dict_and_its_metadata_are_kept():
    sd = collections.OrderedDict([("b", 1), ("a", 2)])
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    out, _ = roundtrip({"model": sd})
    assert isinstance(out["model"], collections.OrderedDict) and list(out["model"]) == ["b", "a"]
    assert out["model"]._metadata == sd._metadata


@pytest.mark.parametrize(
    ("state", "path", "fragment"),
    [
        ({"optimizer": {"param_groups": [{"lr": 0.1, "foo": lambda: 1}]}},
         "state['optimizer']['param_groups'][0]['foo']", "function"),
        ({"a": [1, {2, 3}]}, "state['a'][1]", "set"),
        ({"a": {1.5: "x"}}, "state['a']", "dict key 1.5"),
        ({"a": object()}, "state['a']", "object"),
        ({"a": bytearray(b"x")}, "state['a']", "bytes(value)"),
        ({"a": np.array(["x"])}, "state['a']", "dtype <U1"),
        ({"a": np.array([object()])}, "state['a']", "dtype object"),
    ],
)
def test_unsupported_values_name_their_path(state, path, fragment):
    with pytest.raises(UnsupportedStateError) as info:
        flatten(state)
    assert info.value.path == path
    assert str(info.value).startswith(path) and fragment in str(info.value)


def test_cycles_are_refused():
    a: list = [1]
    a.append(a)
    with pytest.raises(UnsupportedStateError, match="reference cycle") as info:
        flatten({"a": a})
    assert info.value.path == "state['a'][1]"


def test_same_array_twice_is_stored_once_and_loaded_once():
    w = np.arange(4, dtype=np.float32)
    out, leaves = roundtrip({"a": w, "b": [w]})
    assert len(leaves) == 1 and out["a"] is out["b"][0]


def test_numpy_layouts_are_made_contiguous_little_endian():
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(24, dtype=np.float64).reshape(4, 6)[::2, 1::2]
    out, _ = roundtrip({"big": big, "strided": strided, "zero_d": np.array(5, np.int16), "empty": np.zeros((0, 3))})
    np.testing.assert_array_equal(out["big"], big)
    np.testing.assert_array_equal(out["strided"], strided)
    assert out["zero_d"].shape == () and out["zero_d"] == 5
    assert out["empty"].shape == (0, 3)


def test_dtype_names_cover_numpy_and_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for name in ("bool", "int8", "uint64", "float16", "float64", "complex128"):
        assert name_of_numpy(np.dtype(name)) == name
    for name in ("bfloat16", "float8_e4m3fn", "int4"):
        assert name_of_numpy(np.dtype(getattr(ml_dtypes, name))) == name
    assert name_of_numpy(np.dtype("datetime64[s]")) is None
    assert name_of_numpy(np.dtype([("a", "f4")])) is None


def test_unflatten_rejects_anything_unexpected():
    for tree in (
        {"t": "pickle", "v": "cos\nsystem\n"},
        {"t": "ref", "i": 5},
        {"t": "ref", "i": True},
        {"t": "dict", "k": [1.5], "v": [1]},
        {"t": "dict", "k": ["a", "b"], "v": [1]},
        {"t": "ntuple", "name": "os.system", "fields": ["a"], "v": [1]},
        {"t": "ntuple", "name": "X", "fields": ["__class__"], "v": [1]},
        {"t": "float", "v": "1e999"},
        [1, 2],
    ):
        with pytest.raises(CheckpointCorruptError):
            unflatten(tree, [np.zeros(1)])


# ---------------------------------------------------------------------- shards


def leaves_of(sizes):
    # Three top-level groups (and loose arrays), so that group boundaries need alignment padding.
    state: dict = {}
    for i, (n, dt) in enumerate(sizes):
        if i % 4 == 3:
            state[f"t{i}"] = np.arange(n, dtype=dt)
        else:
            state.setdefault(f"g{i % 4}", {})[f"t{i}"] = np.arange(n, dtype=dt)
    return flatten(state)[1]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 3000), st.sampled_from(["u1", "i2", "f4", "f8", "c16"])), max_size=12),
    shard_size=st.integers(1, 5000),
)
def test_shard_plan_covers_every_byte_aligned(sizes, shard_size):
    leaves = leaves_of(sizes)
    shards = plan_shards(leaves, shard_size, step=3)
    covered = {i: 0 for i in range(len(leaves))}
    for shard in shards:
        header, data_start = parse_header(shard.header)
        assert data_start == shard.data_offset and data_start % DATA_ALIGNMENT == 0
        assert header["__metadata__"]["step"] == "3"
        assert sum(p.nbytes for p in shard.parts) <= max(shard_size, max(DTYPES[leaf.dtype].itemsize
                                                                        for leaf in leaves)) + 16
        position = data_start
        for part in shard.parts:
            assert part.offset == position
            position += part.nbytes
            if part.leaf == PADDING:
                assert 0 < part.nbytes < 16 and f"__padding_{part.offset - data_start}__" in header
                continue
            item = DTYPES[leaves[part.leaf].dtype].itemsize
            assert (part.offset - data_start) % min(item, 16) == 0
            assert part.start == covered[part.leaf]
            covered[part.leaf] += part.nbytes
        # safetensors: entries cover the data section back to back
        spans = sorted(e["data_offsets"] for k, e in header.items() if k != "__metadata__")
        assert not spans or spans[0][0] == 0
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert covered == {i: leaf.nbytes for i, leaf in enumerate(leaves)}


def test_shard_headers_describe_whole_tensors_with_their_dtype():
    _, leaves = flatten({"w": np.ones((4, 8), np.float32), "b": np.ones(3, np.int64)})
    (shard,) = plan_shards(leaves, 1 << 20, step=0)
    header, start = parse_header(shard.header)
    assert header["w"] == {"dtype": "F32", "shape": [4, 8], "data_offsets": [24, 24 + 128]}
    assert header["b"] == {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}
    assert struct.unpack("<Q", shard.header[:8])[0] == start - 8


# ---------------------------------------------------------------------- manifest


def minimal_manifest(**changes):
    doc = {
        "format": mf.FORMAT, "version": mf.VERSION, "step": 1, "checksum": "crc32c", "metadata": None,
        "shards": [{"file": "shard-00000.safetensors", "size": 100, "data_offset": 64}],
        "arrays": [{"name": "w", "kind": "numpy", "dtype": "float32", "shape": [2], "parts": [[0, 64, 8, 0]]}],
        "tree": {"t": "ref", "i": 0},
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def test_manifest_accepts_a_valid_document():
    m = mf.decode(minimal_manifest(), uri="x", step=1)
    assert m.arrays[0].shape == (2,) and m.shards[0].file == "shard-00000.safetensors"


@pytest.mark.parametrize(
    "changes",
    [
        {"format": "pickle"},
        {"version": 99},
        {"step": 2},
        {"shards": [{"file": "../../etc/passwd", "size": 100, "data_offset": 64}]},
        {"shards": [{"file": "shard-00000.safetensors", "size": 10, "data_offset": 64}]},
        {"arrays": [{"name": "w", "kind": "numpy", "dtype": "object", "shape": [2], "parts": [[0, 64, 8, 0]]}]},
        {"arrays": [{"name": "w", "kind": "pickle", "dtype": "float32", "shape": [2], "parts": [[0, 64, 8, 0]]}]},
        {"arrays": [{"name": "w", "kind": "numpy", "dtype": "float32", "shape": [3], "parts": [[0, 64, 8, 0]]}]},
        {"arrays": [{"name": "w", "kind": "numpy", "dtype": "float32", "shape": [2], "parts": [[1, 64, 8, 0]]}]},
        {"arrays": [{"name": "w", "kind": "numpy", "dtype": "float32", "shape": [2], "parts": [[0, 96, 8, 0]]}]},
    ],
)
def test_manifest_rejects_invalid_documents(changes):
    with pytest.raises(CheckpointCorruptError, match="invalid checkpoint manifest x"):
        mf.decode(minimal_manifest(**changes), uri="x", step=1)


def test_manifest_rejects_non_json():
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        mf.decode(b"\x80\x04\x95cos\nsystem\n", uri="x")
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        mf.decode(b"[" * 100_000, uri="x")


# ---------------------------------------------------------------------- memory helpers


def test_crc32c_matches_the_reference_on_any_buffer():
    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8)
    expected = google_crc32c.value(data.tobytes())
    assert crc32c(data) == crc32c(data.tobytes()) == crc32c(memoryview(data)) == expected
    assert crc32c(data[50_000:], crc32c(data[:50_000])) == expected
    assert crc32c(b"") == 0


def test_adopt_takes_over_a_temporary_bytes_without_copy():
    def fetch() -> bytes:
        return bytes(range(256)) * 1024

    arr = adopt(fetch())
    assert arr.flags.writeable and arr.nbytes == 256 * 1024
    if sys.implementation.name == "cpython":  # viewed in place, not copied
        assert type(arr.base).__name__.startswith("c_char_Array")
    held = bytes(range(256)) * 1024
    copy = adopt(held)  # referenced elsewhere: copied, the original is untouched
    copy[0] = 99
    assert held[0] == 0


def test_importing_the_package_imports_no_framework():
    code = ("import sys, s3dlio_loader.checkpoint as c; "
            "assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules); print('ok')")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
