"""open_checkpoint_writer / open_checkpoint_reader: torch.save and torch.load to and from any URI."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3dlio_loader import ObjectNotFoundError, Store
from s3dlio_loader.checkpoint import open_checkpoint_reader, open_checkpoint_writer


def model_state() -> dict:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 32)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "bf16": torch.randn(100).bfloat16(),
            "epoch": 3}


def test_torch_save_and_load_through_streams(backend):
    uri = backend.uri("models", "model.pt")
    state = model_state()
    with open_checkpoint_writer(uri, backend.storage_options) as f:
        torch.save(state, f)
        assert f.tell() > 0
    # A tiny read-ahead window makes torch.load's seeks cross many windows.
    with open_checkpoint_reader(uri, backend.storage_options, readahead=4096) as f:
        loaded = torch.load(f, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["bf16"], state["bf16"])
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    with open_checkpoint_reader(uri, backend.storage_options) as f:  # default window: one request here
        assert torch.load(f, weights_only=True)["epoch"] == 3


def test_writer_is_all_or_nothing(backend):
    store = Store.from_uri(backend.root_uri, backend.storage_options)
    failed = backend.uri("failed.pt")
    with pytest.raises(RuntimeError, match="boom"), open_checkpoint_writer(failed, store=store) as f:
        f.write(b"x" * 100_000)
        raise RuntimeError("boom")
    assert not store.exists(failed)

    dropped = backend.uri("dropped.pt")
    f = open_checkpoint_writer(dropped, store=store)
    f.write(b"partial")
    del f
    gc.collect()
    assert not store.exists(dropped)

    big = backend.uri("big.bin")
    data = np.random.default_rng(0).integers(0, 256, 9 << 20, dtype=np.uint8)
    with open_checkpoint_writer(big, store=store) as f:
        for start in range(0, data.nbytes, 3 << 20):
            f.write(memoryview(data[start : start + (3 << 20)]))
        f.write(np.arange(3, dtype=np.float64))  # any buffer, cast to bytes
    expected = data.tobytes() + np.arange(3, dtype=np.float64).tobytes()
    assert store.get(big) == expected


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 70_000), st.integers(-1, 30_000)), min_size=1, max_size=30),
       window=st.sampled_from([333, 4096, 100_000]))
def test_reader_random_access_matches_the_bytes(tmp_path_factory, ops, window):
    path = tmp_path_factory.mktemp("reader") / "blob.bin"
    data = np.random.default_rng(len(ops)).integers(0, 256, 65_537, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    reference = io.BytesIO(data)
    with open_checkpoint_reader(str(path), readahead=window) as f:
        assert f.seekable() and f.readable() and f.size == len(data)
        for position, size in ops:
            assert f.seek(position) == reference.seek(position)
            assert f.read(size) == reference.read(size)
            assert f.tell() == reference.tell()
            buf = bytearray(max(size, 0))
            assert f.readinto(buf) == reference.readinto(buf2 := bytearray(len(buf)))
            assert buf == buf2
        assert f.seek(-10, io.SEEK_END) == len(data) - 10 and f.read() == data[-10:]


def test_reader_on_a_missing_object(tmp_path):
    with pytest.raises(ObjectNotFoundError):
        open_checkpoint_reader(str(tmp_path / "absent.pt"))
