"""CheckpointStore on every backend: round trips, visibility, retention, integrity, no pickle, async saves."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s3dlio_loader import ConfigError
from s3dlio_loader.checkpoint import (
    CheckpointCorruptError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CheckpointStore,
    ShardWritten,
    UnsupportedStateError,
)
from s3dlio_loader.checkpoint.shards import parse_header

WORKER = Path(__file__).resolve().parent / "ckpt_worker.py"


def make_ckpt(backend, *parts: str, **kwargs) -> CheckpointStore:
    return CheckpointStore(backend.uri("ckpt", *parts), backend.storage_options, **kwargs)


def tiny_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
    return model, opt


def rich_state() -> dict:
    model, opt = tiny_model()
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    shared = torch.randn(7)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "tensors": {
            "bf16": torch.randn(33, 5).to(torch.bfloat16),
            "fp16": torch.randn(4, 4).half(),
            "f8": torch.randn(9).to(torch.float8_e4m3fn),
            "c64": torch.randn(3, dtype=torch.complex64),
            "conj": torch.randn(3, dtype=torch.complex64).conj(),
            "bool": torch.tensor([True, False, True]),
            "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
            "u16": torch.tensor([0, 65535], dtype=torch.uint16),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 4),
            "transposed": base.t(),
            "sliced": base[1:4, ::3],
            "tied_a": shared,
            "tied_b": shared,
            "grad": torch.ones(3, requires_grad=True),
        },
        "numpy": {"f64": np.linspace(0, 1, 11), "i32": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
                  "scalar": np.float32(1.25), "zero_d": np.array(7, dtype=np.int64)},
        "plain": {"s": "text", "none": None, "yes": True, "no": False, "n": 3, "x": 0.1, "tuple": (1, "a", None),
                  "raw": b"\x00\xffbytes"},
        "step": 42,
    }


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and type(b) is torch.Tensor, f"{path}: {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{b.shape}"
        a2 = a.detach().resolve_conj()
        assert torch.equal(a2.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), path
    elif isinstance(a, np.ndarray | np.generic):
        assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b), path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), f"{path}: {type(a)} {list(a)} vs {type(b)} {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {type(a)} vs {type(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"


def shard_paths(backend, step: int) -> list[str]:
    fs = backend.fs()
    return sorted(p for p in fs.find(backend.path("ckpt", f"step-{step:08d}")) if p.endswith(".safetensors"))


# ---------------------------------------------------------------------- round trips


def test_torch_model_and_optimizer_roundtrip(backend):
    state = rich_state()
    ckpt = make_ckpt(backend, shard_size=1024)  # small shards: many objects, tensors spanning several
    info = ckpt.save(1, state, metadata={"epoch": 3, "note": "unit"})
    assert info.shards > 3 and info.arrays == len(ckpt.manifest(1).arrays)
    loaded = ckpt.load(1)
    assert_same(state, loaded)
    assert loaded["model"]._metadata == state["model"]._metadata
    assert loaded["tensors"]["tied_a"] is loaded["tensors"]["tied_b"]
    assert ckpt.metadata(1) == {"epoch": 3, "note": "unit"}

    # The loaded state resumes training exactly like the original.
    model, opt = tiny_model()
    model2 = copy.deepcopy(model)
    model2.load_state_dict(loaded["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    opt2.load_state_dict(loaded["optimizer"])
    x = torch.randn(8, 6)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_jax_pytree_roundtrip(backend):
    args = {"uri": backend.uri("jax"), "storage_options": backend.storage_options}
    out = subprocess.run([sys.executable, "-W", "error", str(WORKER), "jax", json.dumps(args)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_load_as_another_framework(tmp_path):
    ckpt = CheckpointStore(str(tmp_path))
    state = {"t": torch.randn(3, 2).to(torch.bfloat16), "n": np.arange(4, dtype=np.int16), "s": np.float64(2.0)}
    ckpt.save(0, state)
    as_np = ckpt.load(as_="numpy")
    assert isinstance(as_np["t"], np.ndarray) and str(as_np["t"].dtype) == "bfloat16"
    np.testing.assert_array_equal(as_np["t"].astype(np.float32), state["t"].float().numpy())
    assert isinstance(as_np["s"], np.float64)
    as_torch = ckpt.load(as_="torch", device="cpu")
    assert torch.equal(as_torch["n"], torch.arange(4, dtype=torch.int16))
    assert as_torch["s"].shape == () and as_torch["s"].dtype == torch.float64
    assert torch.equal(as_torch["t"], state["t"])
    loaded = ckpt.load()
    loaded["n"][0] = 9  # loaded arrays are writable and independent of the store
    with pytest.raises(ConfigError, match="as_"):
        ckpt.load(as_="tensorflow")


@pytest.mark.parametrize("mode", ["whole", "ranges", "auto"])
def test_read_modes_agree(tmp_path, mode):
    rng = np.random.default_rng(1)
    state = {f"a{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate([1, 5000, 70_000, 3, 0, 40_000])}
    ckpt = CheckpointStore(str(tmp_path), shard_size=64 << 10, read_mode=mode, read_chunk=32 << 10)
    ckpt.save(0, state)
    assert_same(state, ckpt.load())


def test_direct_and_object_stores_read_ranges(backend):
    if backend.scheme == "file":
        pytest.skip("file:// reads straight into the arrays; covered by test_read_modes_agree")
    rng = np.random.default_rng(2)
    state = {f"a{i}": rng.standard_normal(n) for i, n in enumerate([10, 9000, 30_000, 1])}
    ckpt = make_ckpt(backend, shard_size=100 << 10, read_mode="ranges", read_chunk=40 << 10)
    ckpt.save(0, state)
    assert_same(state, ckpt.load())


@pytest.mark.parametrize("mode", ["auto", "whole", "ranges"])
def test_groups_share_a_shard_with_alignment_padding(backend, mode):
    state = {"a": {"x": np.arange(3, dtype=np.int8), "t": torch.arange(3, dtype=torch.int16)},
             "b": {"y": np.arange(5, dtype=np.float64), "c": np.ones(2, np.complex128)}, "loose": np.ones(1, np.int8)}
    ckpt = make_ckpt(backend, read_mode=mode)
    ckpt.save(0, state)
    manifest = ckpt.manifest(0)
    assert len(manifest.shards) == 1
    header, start = parse_header(backend.fs().cat_file(shard_paths(backend, 0)[0]))
    assert any(name.startswith("__padding_") for name in header)
    for entry in manifest.arrays:
        assert (entry.parts[0].offset - start) % min(entry.dtype.itemsize, 16) == 0
    assert_same(state, ckpt.load())


def test_mmap_load_shares_the_page_cache_copy_on_write(tmp_path):
    state = {"w": torch.arange(50_000, dtype=torch.float32), "big": np.arange(70_000, dtype=np.float64),
             "small": np.ones(3, np.int8)}
    ckpt = CheckpointStore(str(tmp_path), shard_size=256 << 10)  # "big" spans shards: copied, not mapped
    ckpt.save(1, state)
    loaded = ckpt.load(1, mmap=True)
    assert_same(state, loaded)
    loaded["w"][0] = -1.0  # copy-on-write: the file is unchanged
    assert ckpt.load(1)["w"][0] == 0.0
    ckpt.delete(1)  # mapped arrays outlive the files
    assert float(loaded["w"][1]) == 1.0 and loaded["big"][-1] == 69_999
    with pytest.raises(ConfigError, match="mmap"):
        CheckpointStore("s3://bucket/x").load(1, mmap=True)


def test_shards_are_valid_safetensors(tmp_path):
    state = {"w": torch.randn(8, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.ones(3).half(),
             "big": torch.arange(3000, dtype=torch.float32)}
    ckpt = CheckpointStore(str(tmp_path), shard_size=4096)
    ckpt.save(7, state)
    codes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    found = {}
    for path in sorted((tmp_path / "step-00000007").glob("shard-*.safetensors")):
        data = path.read_bytes()
        header, start = parse_header(data)
        assert start % 8 == 0 and header["__metadata__"]["step"] == "7"
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            lo, hi = entry["data_offsets"]
            end = max(end, hi)
            if entry["dtype"] in codes:
                values = np.frombuffer(data[start + lo : start + hi], codes[entry["dtype"]])
                found[name] = values.reshape(entry["shape"])
        assert start + end == len(data)  # the data section is fully indexed, as safetensors requires
    for name in ("w", "b", "h"):
        np.testing.assert_array_equal(found[name], state[name].numpy())
    assert "big" not in found  # spans shards: stored as raw U8 pieces


# ---------------------------------------------------------------------- visibility, latest, retention


def test_manifest_is_written_last(backend):
    seen = []
    observer = make_ckpt(backend)
    fs = backend.fs()

    def progress(event: ShardWritten) -> None:
        seen.append((event.index, observer.list(), fs.exists(backend.path("ckpt", "step-00000002",
                                                                                        "manifest.json"))))

    ckpt = make_ckpt(backend, shard_size=2048, max_in_flight=1, progress=progress)
    ckpt.save(1, {"x": np.zeros(10)})
    seen.clear()
    ckpt.save(2, {"x": np.arange(3000, dtype=np.float64)})
    assert len(seen) > 3
    assert all(listed == [1] and not manifest_exists for _, listed, manifest_exists in seen), seen
    assert ckpt.list() == [1, 2] and ckpt.latest() == 2


def test_latest_and_default_load(backend):
    ckpt = make_ckpt(backend)
    assert ckpt.list() == [] and ckpt.latest() is None
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint under"):
        ckpt.load()
    for step in (3, 10, 7):
        ckpt.save(step, {"step": step, "w": np.full(4, step)})
    assert ckpt.list() == [3, 7, 10] and ckpt.latest() == 10
    assert ckpt.load()["step"] == 10 and ckpt.load(7)["step"] == 7
    pointer = json.loads(backend.fs().cat_file(backend.path("ckpt", "latest")))
    assert pointer == {"step": 10, "dir": "step-00000010"}
    with pytest.raises(CheckpointNotFoundError, match="step 8"):
        ckpt.load(8)
    ckpt.delete(10)
    assert ckpt.latest() == 7
    assert json.loads(backend.fs().cat_file(backend.path("ckpt", "latest")))["step"] == 7


def test_keep_last(backend):
    ckpt = make_ckpt(backend, keep_last=2, shard_size=512)
    for step in (1, 2, 3, 4):
        ckpt.save(step, {"w": np.full(200, step, dtype=np.float32)})
    assert ckpt.list() == [3, 4]
    fs = backend.fs()
    assert not fs.exists(backend.path("ckpt", "step-00000001", "shard-00000.safetensors"))
    ckpt.save(2, {"w": np.zeros(3)})  # an older step just saved is kept
    assert ckpt.list() == [2, 3, 4]
    ckpt.save(5, {"w": np.zeros(3)})
    assert ckpt.list() == [4, 5]
    assert ckpt.load()["w"].shape == (3,)
    with pytest.raises(ConfigError, match="keep_last"):
        make_ckpt(backend, keep_last=0)


def test_exists_overwrite_and_delete(tmp_path):
    ckpt = CheckpointStore(str(tmp_path))
    ckpt.save(1, {"v": 1})
    with pytest.raises(CheckpointExistsError, match="overwrite=True"):
        ckpt.save(1, {"v": 2})
    ckpt.save(1, {"v": 3, "w": np.ones(2)}, overwrite=True)
    assert ckpt.load(1)["v"] == 3
    ckpt.delete(1)
    assert ckpt.list() == [] and not (tmp_path / "step-00000001").exists() and not (tmp_path / "latest").exists()
    with pytest.raises(CheckpointNotFoundError):
        ckpt.delete(1)
    with pytest.raises(ConfigError, match="step"):
        ckpt.save(-1, {})
    with pytest.raises(ConfigError, match="metadata"):
        ckpt.save(2, {}, metadata={"x": object()})


def test_leftovers_of_an_interrupted_save_are_cleared(tmp_path):
    step_dir = tmp_path / "step-00000005"
    step_dir.mkdir()
    (step_dir / "shard-00007.safetensors").write_bytes(b"junk")
    (step_dir / "shard-00000.safetensors.tmp-123456789abc").write_bytes(b"junk")
    ckpt = CheckpointStore(str(tmp_path))
    assert ckpt.list() == []
    ckpt.save(5, {"w": np.ones(3)})
    assert sorted(p.name for p in step_dir.iterdir()) == ["manifest.json", "shard-00000.safetensors"]


def test_unsupported_leaf_fails_before_writing(tmp_path):
    ckpt = CheckpointStore(str(tmp_path))
    state = {"optimizer": {"param_groups": [{"lr": 0.1, "foo": lambda: 0}]}, "w": np.ones(3)}
    with pytest.raises(UnsupportedStateError) as info:
        ckpt.save(1, state)
    assert info.value.path == "state['optimizer']['param_groups'][0]['foo']"
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing_and_background_errors_surface(tmp_path, caplog):
    def progress(event: ShardWritten) -> None:
        if event.index == 1:
            raise RuntimeError("disk on fire")

    ckpt = CheckpointStore(str(tmp_path), shard_size=1024, max_in_flight=1, progress=progress)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ckpt.save(1, {"w": np.zeros(1000)})
    assert ckpt.list() == [] and not list((tmp_path / "step-00000001").glob("*"))
    future = ckpt.save_async(2, {"w": np.zeros(1000)})
    with pytest.raises(RuntimeError, match="disk on fire"):
        future.result(timeout=60)
    assert "background save of step 2" in caplog.text and ckpt.list() == []
    ckpt.close()


# ---------------------------------------------------------------------- integrity


def test_corrupted_shard_is_named(backend):
    ckpt = make_ckpt(backend, shard_size=4096)
    state = {"w": np.arange(2000, dtype=np.float32), "b": np.ones(10)}
    ckpt.save(1, state)
    fs = backend.fs()
    victim = shard_paths(backend, 1)[0]
    data = bytearray(fs.cat_file(victim))
    data[-5] ^= 0x40
    fs.pipe_file(victim, bytes(data))
    name = victim.rsplit("/", 1)[-1]
    with pytest.raises(CheckpointCorruptError, match=f"checksum mismatch in .*{name}.*'w'") as info:
        ckpt.load(1)
    assert info.value.uri.endswith(name)
    unchecked = ckpt.load(1, verify=False)
    assert not np.array_equal(unchecked["w"], state["w"])


def test_missing_or_truncated_shard_is_named(backend):
    ckpt = make_ckpt(backend, shard_size=4096)
    ckpt.save(1, {"w": np.arange(4000, dtype=np.float32)})
    fs = backend.fs()
    first, second = shard_paths(backend, 1)[:2]
    kept = fs.cat_file(second)
    fs.rm(second)
    with pytest.raises(CheckpointCorruptError, match=f"{second.rsplit('/', 1)[-1]} is missing"):
        ckpt.load(1)
    fs.pipe_file(second, kept)
    fs.pipe_file(first, fs.cat_file(first)[:100])
    with pytest.raises(CheckpointCorruptError, match=f"{first.rsplit('/', 1)[-1]} is truncated"):
        make_ckpt(backend).load(1)


# ---------------------------------------------------------------------- no pickle


def test_loading_never_unpickles(tmp_path, monkeypatch):
    ckpt = CheckpointStore(str(tmp_path))
    state = rich_state()
    ckpt.save(1, state)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert_same(state, ckpt.load(1))


def test_injected_manifest_content_cannot_run_code(tmp_path):
    ckpt = CheckpointStore(str(tmp_path))
    ckpt.save(1, {"w": np.ones(4, dtype=np.float32), "n": 1})
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    payload = pickle.dumps(Evil())
    manifest_path = tmp_path / "step-00000001" / "manifest.json"
    original = json.loads(manifest_path.read_text())
    attacks = [
        {**original, "tree": {"t": "pickle", "v": payload.decode("latin-1")}},
        {**original, "tree": {"t": "ntuple", "name": "os.system", "fields": ["cmd"], "v": [f"touch {sentinel}"]}},
        {**original, "tree": {"t": "ntuple", "name": "X", "fields": ["__reduce__"], "v": [f"touch {sentinel}"]}},
        {**original, "arrays": [{**original["arrays"][0], "dtype": "object"}]},
        {**original, "arrays": [{**original["arrays"][0], "kind": "pickle"}]},
        {**original, "shards": [{**original["shards"][0], "file": "../../../etc/passwd"}]},
    ]
    for doc in attacks:
        manifest_path.write_text(json.dumps(doc))
        with pytest.raises(CheckpointCorruptError):
            ckpt.load(1)
    # A named tuple is only ever a named tuple, whatever its name says.
    manifest_path.write_text(json.dumps({**original, "tree": {"t": "ntuple", "name": "system", "fields": ["cmd"],
                                                              "v": [f"touch {sentinel}"]}}))
    assert ckpt.load(1) == (f"touch {sentinel}",)
    # A manifest that is itself a pickle is not JSON.
    manifest_path.write_bytes(payload)
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        ckpt.load(1)
    # A shard whose data is replaced by a pickle is just bytes: caught by the checksum, and
    # without verification loaded as (meaningless) numbers, never executed.
    manifest_path.write_text(json.dumps(original))
    shard = tmp_path / "step-00000001" / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    start = original["arrays"][0]["parts"][0][1]
    raw[start : start + 16] = payload[:16].ljust(16, b"\0")
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        ckpt.load(1)
    assert ckpt.load(1, verify=False)["w"].dtype == np.float32
    assert not sentinel.exists()


# ---------------------------------------------------------------------- async saves


def test_save_async_snapshots_before_returning(backend):
    ckpt = make_ckpt(backend, shard_size=4096)
    t = torch.zeros(3000)
    arr = np.zeros(100)
    future = ckpt.save_async(1, {"t": t, "arr": arr, "nested": [t[:10]]})
    t.add_(1)  # the next training step, while the upload runs
    arr += 5
    info = future.result(timeout=120)
    assert info.step == 1
    loaded = ckpt.load(1)
    assert torch.count_nonzero(loaded["t"]) == 0 and not loaded["arr"].any() and not loaded["nested"][0].any()

    # A second save waits for the first; a third with the same layout reuses the staging memory.
    f2 = ckpt.save_async(2, {"t": t, "arr": arr, "nested": [t[:10]]})
    staging = list(ckpt._staging)
    f3 = ckpt.save_async(3, {"t": t * 2, "arr": arr, "nested": [t[:10]]})
    assert f2.done() and all(a is b for a, b in zip(staging, ckpt._staging, strict=True))
    f3.result(timeout=120)
    assert ckpt.list() == [1, 2, 3]
    assert torch.equal(ckpt.load(3)["t"], t * 2) and torch.equal(ckpt.load(2)["t"], t)
    with pytest.raises(CheckpointExistsError):
        ckpt.save_async(3, {"t": t})
    ckpt.close()
