"""The PyTorch adapter with real DataLoader worker processes (fork, and spawn once).

Every sample carries its own global id (``id``), so each test checks exactly what was
delivered: every sample once per epoch, in which order, from which position on a resume.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from s3dlio_loader import ConfigError, Dataset, Loader, Store
from s3dlio_loader.adapters import torch as torch_adapter
from s3dlio_loader.adapters.torch import (
    ObjectStoreIterableDataset,
    ObjectStoreMapDataset,
    S3Collate,
    S3IterableDataset,
    S3MapDataset,
    s3dlio_collate,
    to_tensor,
)
from s3dlio_loader.formats import write

FILES, ROWS = 6, 50
N = FILES * ROWS
MANY_WORKERS = pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes:UserWarning")


def write_npz(root, files=FILES, rows=ROWS, store_options=None):
    for f in range(files):
        ids = np.arange(f * rows, (f + 1) * rows, dtype=np.int64)
        write(f"{root}/part-{f}.npz", {"id": ids, "x": np.repeat(ids[:, None], 4, axis=1).astype(np.float32)},
              storage_options=store_options)  # fmt: skip
    return f"{root}/"


@pytest.fixture
def npz_uri(tmp_path):
    """Six .npz files of 50 rows: ``id`` int64 (the global sample id) and ``x`` float32 [4] (= id)."""
    return write_npz(f"file://{tmp_path}/npz")


def raw_payload(i: int) -> bytes:
    return f"{i:08d}".encode() * (1 + i % 5)


@pytest.fixture
def raw_uri(tmp_path):
    """40 raw objects of different sizes whose bytes start with their id."""
    for i in range(40):
        write(f"file://{tmp_path}/raw/obj-{i:04d}.bin", raw_payload(i), format="raw")
    return f"file://{tmp_path}/raw/"


def make_source(tmp_path, fmt):
    """(uri, format options, number of samples) of a small dataset of ``fmt`` whose samples hold their id."""
    root = f"file://{tmp_path}/{fmt}"
    if fmt == "npz":
        return write_npz(root), {"rows": True}, N
    if fmt == "raw":
        for i in range(40):
            write(f"{root}/obj-{i:04d}.bin", raw_payload(i), format="raw")
        return f"{root}/", {}, 40
    ids = np.arange(60, dtype=np.int64)
    for f in range(3):
        part = ids[f * 20 : (f + 1) * 20]
        columns = {"id": part, "x": part.astype(np.float32)}
        if fmt == "parquet":
            write(f"{root}/p{f}.parquet", columns, row_group_size=8)
        elif fmt == "tfrecord":
            write(f"{root}/p{f}.tfrecord", [{"id": int(i)} for i in part])
        elif fmt == "hdf5":
            write(f"{root}/p{f}.h5", columns, chunks=8)
    options = {"parquet": {"items": "row", "decode": "numpy"}, "tfrecord": {"features": {"id": ("int64", ())}},
               "hdf5": {}}[fmt]  # fmt: skip
    return f"{root}/", options, 60


def ids_of(batch) -> list[int]:
    """The sample ids in a batch of any shape the tests produce."""
    if isinstance(batch, dict):
        return [int(i) for i in batch["id"]]
    if isinstance(batch, list):  # raw: bytes, or uint8 tensors
        return [int(bytes(b.numpy()) if isinstance(b, torch.Tensor) else b[:8]) if len(b) else -1 for b in batch]
    raise AssertionError(f"unexpected batch {type(batch)}")


def collect(loader) -> list[int]:
    return [i for batch in loader for i in ids_of(batch)]


def ids_of_raw(batch) -> list[int]:
    return [int(bytes(b[:8])) for b in batch]


# ---------------------------------------------------------------------- exactly once


@MANY_WORKERS
@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
@pytest.mark.parametrize("fmt", ["npz", "raw"])
def test_every_sample_once_per_epoch(tmp_path, fmt, num_workers):
    uri, options, n = make_source(tmp_path, fmt)
    ds = S3IterableDataset(uri, fmt, shuffle=True, seed=3, **options)
    loader = DataLoader(ds, batch_size=16, num_workers=num_workers)
    first = collect(loader) if fmt != "raw" else [i for b in loader for i in ids_of_raw(b)]
    assert sorted(first) == list(range(n))
    assert len(ds) == n


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "hdf5"])
def test_every_sample_once_other_formats(tmp_path, fmt, num_workers):
    uri, options, n = make_source(tmp_path, fmt)
    ds = S3IterableDataset(uri, fmt, shuffle="block", seed=1, read_size=7, **options)
    batches = list(DataLoader(ds, batch_size=10, num_workers=num_workers, collate_fn=s3dlio_collate))
    assert sorted(i for b in batches for i in ids_of(b)) == list(range(n))
    assert all(isinstance(b["id"], torch.Tensor) for b in batches)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_mode_is_the_engine_plan_whatever_the_workers(npz_uri, num_workers):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=16, shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    batches = [ids_of(b) for b in loader]
    engine = Loader(npz_uri, "npz", rows=True, batch_size=16, shuffle=True, seed=7)
    assert batches == [b["id"].tolist() for b in engine], "batch i of the DataLoader is batch i of the plan"
    assert len(loader) == len(ds) == len(batches) == -(-N // 16)
    assert all(isinstance(b["x"], torch.Tensor) and b["x"].shape[1:] == (4,) for b in loader)


def test_sample_mode_without_dataloader_batching(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True)
    items = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert sorted(int(s["id"]) for s in items) == list(range(N))
    assert all(s["x"].shape == (4,) for s in items)


def test_drop_last_and_pad_even_out_ranks(npz_uri):
    """Seven ranks over 300 samples: equal counts, padded (one repeat) or trimmed."""
    padded = [S3IterableDataset(npz_uri, "npz", rows=True, rank=r, world_size=7) for r in range(7)]
    assert {len(ds) for ds in padded} == {43}
    union = [int(s["id"]) for ds in padded for s in ds]
    assert set(union) == set(range(N)) and len(union) == 7 * 43
    trimmed = [S3IterableDataset(npz_uri, "npz", rows=True, rank=r, world_size=7, drop_last=True) for r in range(7)]
    ids = [int(s["id"]) for ds in trimmed for s in ds]
    assert len(ids) == len(set(ids)) == 7 * 42


# ---------------------------------------------------------------------- order and epochs


def test_shuffle_is_deterministic_and_set_epoch_reshuffles(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=5)
    first = collect(DataLoader(ds, batch_size=8, num_workers=2))
    again = collect(DataLoader(S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=5),
                               batch_size=8, num_workers=2))  # fmt: skip
    assert first == again, "same seed, same epoch, same workers: same order"
    assert collect(DataLoader(ds, batch_size=8, num_workers=2)) == first, "no set_epoch: the epoch repeats"
    ds.set_epoch(1)
    second = collect(DataLoader(ds, batch_size=8, num_workers=2))
    assert sorted(second) == list(range(N)) and second != first
    other_seed = collect(DataLoader(S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=6),
                                    batch_size=8, num_workers=2))  # fmt: skip
    assert other_seed != first
    unshuffled = collect(DataLoader(S3IterableDataset(npz_uri, "npz", rows=True), batch_size=8))
    assert unshuffled == list(range(N))


@pytest.mark.parametrize("mode", ["samples", "batches"])
def test_persistent_workers_see_set_epoch(npz_uri, mode):
    kw = {"batch_size": 10} if mode == "batches" else {}
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2, **kw)
    loader = DataLoader(ds, batch_size=None if kw else 10, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append(collect(loader))
        fresh = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2, **kw)
        fresh.set_epoch(epoch)
        assert orders[-1] == collect(DataLoader(fresh, batch_size=None if kw else 10, num_workers=2))
    assert all(sorted(o) == list(range(N)) for o in orders)
    assert orders[0] != orders[1] != orders[2]


@pytest.mark.slow
def test_spawned_persistent_workers(npz_uri):
    """Spawned workers get the dataset pickled: they still share the epoch with this process."""
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=4)
    loader = DataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="spawn", persistent_workers=True)
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        orders.append(collect(loader))
        ds_fork = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=4)
        ds_fork.set_epoch(epoch)
        assert orders[-1] == collect(DataLoader(ds_fork, batch_size=16, num_workers=2))
    assert orders[0] != orders[1] and all(sorted(o) == list(range(N)) for o in orders)


def test_lambda_transform_in_fork_workers(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, transform=lambda s: {"id": s["id"], "x2": s["x"] * 2})
    batches = list(DataLoader(ds, batch_size=25, num_workers=2))
    assert sorted(collect(batches)) == list(range(N))
    assert all(torch.equal(b["x2"][:, 0], b["id"].float() * 2) for b in batches)


# ---------------------------------------------------------------------- storage


def test_s3_dataloader_with_workers(moto_server):
    bucket = "torch-adapter"
    root = moto_server.make_bucket(bucket)
    options = moto_server.storage_options()
    uri = write_npz(root, files=3, rows=20, store_options=options)
    ds = S3IterableDataset.from_prefix(uri, "npz", rows=True, shuffle=True, storage_options=options)
    assert sorted(collect(DataLoader(ds, batch_size=8, num_workers=2))) == list(range(60))
    objects = [o.uri for o in Store.from_uri(uri, options).list(uri)]
    by_list = S3MapDataset.from_objects(objects, "npz", rows=True, storage_options=options)
    assert sorted(collect(DataLoader(by_list, batch_size=8, num_workers=2))) == list(range(60))


# ---------------------------------------------------------------------- map-style


def test_map_dataset_with_distributed_sampler_and_batched_reads(npz_uri, monkeypatch):
    ds = S3MapDataset.from_prefix(npz_uri, "npz", rows=True)
    assert len(ds) == N and int(ds[-1]["id"]) == N - 1
    calls = []
    original = Dataset.read_samples
    monkeypatch.setattr(Dataset, "read_samples", lambda self, ids: calls.append(len(ids)) or original(self, ids))
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        shards.append(collect(DataLoader(ds, batch_size=16, sampler=sampler)))
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(N))
    assert calls == [16] * 9 + [6] + [16] * 9 + [6], "one read per batch (__getitems__), not one per sample"
    with_workers = DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, num_replicas=2, rank=1,
                                                                           shuffle=True, seed=1), num_workers=2)
    assert collect(with_workers) == shards[1]
    with pytest.raises(IndexError, match="out of range"):
        ds[N]


# ---------------------------------------------------------------------- tensors and collation


def test_read_only_arrays_are_copied_and_writable_ones_shared(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True)
    sample = next(iter(ds))
    assert isinstance(sample["x"], torch.Tensor) and sample["id"].ndim == 0
    sample["x"] += 1  # a copy of the read-only reader view: writable, and the data stays intact
    assert int(next(iter(ds))["x"][0]) == 0
    keep = np.arange(6.0)
    shared = S3IterableDataset(npz_uri, "npz", rows=True, transform=lambda s: keep)
    assert np.shares_memory(next(iter(shared)).numpy(), keep), "writable arrays go to torch without a copy"
    raw = S3IterableDataset(npz_uri, "npz", rows=True, to_tensor=False)
    assert isinstance(next(iter(raw))["x"], np.ndarray)


def test_to_tensor_shapes():
    assert to_tensor(b"ab") == b"ab" and to_tensor("s") == "s"
    big_endian = np.arange(3, dtype=">i4")
    assert to_tensor(big_endian).tolist() == [0, 1, 2]
    assert to_tensor(np.arange(4)[::-1]).tolist() == [3, 2, 1, 0]
    assert isinstance(to_tensor(np.array(["a", "b"])), np.ndarray)
    assert to_tensor((np.int32(3), [np.float64(1.5)]))[0].dtype == torch.int32


def test_collate_handles_dicts_bytes_ragged_and_numbers():
    ro = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32).reshape(2, 3)
    batch = s3dlio_collate([{"x": ro, "y": 1, "b": b"ab", "r": np.ones(i + 1), "t": (1.0, "s")} for i in range(3)])
    assert batch["x"].shape == (3, 2, 3) and batch["x"].dtype == torch.float32
    assert batch["y"].tolist() == [1, 1, 1] and batch["b"] == [b"ab"] * 3
    assert [t.shape[0] for t in batch["r"]] == [1, 2, 3]
    assert batch["t"][0].tolist() == [1.0] * 3 and batch["t"][1] == ["s"] * 3
    tensors = S3Collate(bytes_as="tensor")([b"abc", memoryview(b"de")])
    assert [bytes(t.numpy()) for t in tensors] == [b"abc", b"de"]
    assert tensors[0].untyped_storage().data_ptr() == tensors[1].untyped_storage().data_ptr()
    assert s3dlio_collate([torch.ones(2), torch.zeros(2)]).shape == (2, 2)
    with pytest.raises(ConfigError, match="bytes_as"):
        S3Collate(bytes_as="list")  # type: ignore[arg-type]


def test_collate_allocates_batches_in_shared_memory_inside_workers(monkeypatch):
    monkeypatch.setattr(torch_adapter, "get_worker_info", lambda: object())
    assert s3dlio_collate([np.ones(3), np.zeros(3)]).is_shared()
    assert S3Collate(bytes_as="tensor")([b"x", b"yz"])[1].is_shared()


def test_raw_bytes_through_workers_as_tensors(raw_uri):
    ds = S3IterableDataset(raw_uri, "raw", batch_size=8, collate_fn=S3Collate(bytes_as="tensor"))
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    got = {int(bytes(t[:8].numpy())): bytes(t.numpy()) for b in batches for t in b}
    assert got == {i: raw_payload(i) for i in range(40)}


def test_raw_bytes_from_engine_workers_with_the_default_collate(raw_uri):
    ds = S3IterableDataset(raw_uri, "raw", batch_size=8, engine_workers=2)
    batches = list(DataLoader(ds, batch_size=None))  # torch's default_convert sees each batch
    ds.close()
    assert all(isinstance(b, list) and all(isinstance(v, bytes) for v in b) for b in batches)
    assert {int(v[:8]): v for b in batches for v in b} == {i: raw_payload(i) for i in range(40)}


# ---------------------------------------------------------------------- resuming


def test_resume_in_process_then_with_workers(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=9)
    it = iter(DataLoader(ds, batch_size=10))
    taken = [i for _ in range(7) for i in ids_of(next(it))]
    state = ds.state_dict()
    assert state["consumed"] == 70 and "extra" not in state
    resumed = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=9)
    resumed.load_state_dict(state)
    rest = collect(DataLoader(resumed, batch_size=10, num_workers=2))
    assert sorted(taken + rest) == list(range(N)), "no sample twice, none lost"
    resumed.set_epoch(1)
    assert sorted(collect(DataLoader(resumed, batch_size=10, num_workers=2))) == list(range(N))


@pytest.mark.parametrize("taken_batches", [6, 7])
def test_resume_sample_mode_after_batches_from_workers(npz_uri, taken_batches):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=1)
    ds.set_epoch(3)
    loader = DataLoader(ds, batch_size=8, num_workers=2)
    it = iter(loader)
    taken = [i for _ in range(taken_batches) for i in ids_of(next(it))]
    del it
    with pytest.raises(ConfigError, match="batches="):
        ds.state_dict()
    state = ds.state_dict(batches=taken_batches, loader=loader)
    assert state["epoch"] == 3
    assert ("extra" in state) == (taken_batches % 2 == 1), "mid-round positions need per-worker counts"
    resumed = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=1)
    resumed.load_state_dict(state)
    rest = collect(DataLoader(resumed, batch_size=8, num_workers=2))
    assert sorted(taken + rest) == list(range(N))
    other = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=1)
    other.load_state_dict(state)
    if taken_batches % 2:
        with pytest.raises(ConfigError, match="num_workers=2"):
            list(other)
    else:
        assert sorted(taken + [int(s["id"]) for s in other]) == list(range(N)), "a whole round: any workers"


def test_resume_batch_mode_with_another_number_of_workers(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=12, shuffle=True, seed=8)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    it = iter(loader)
    taken = [ids_of(next(it)) for _ in range(5)]
    del it
    state = ds.state_dict(batches=5)
    resumed = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=12, shuffle=True, seed=8)
    resumed.load_state_dict(state)
    rest = [ids_of(b) for b in DataLoader(resumed, batch_size=None, num_workers=1)]
    full = [ids_of(b) for b in DataLoader(ds, batch_size=None)]
    assert taken + rest == full, "the rest of the epoch, in plan order"
    assert len(resumed) == len(rest)


def test_worker_level_state_protocol(npz_uri, monkeypatch):
    """What torchdata's StatefulDataLoader does in each worker: state_dict() there, load_state_dict() there."""

    class Info:
        id, num_workers = 1, 2

    monkeypatch.setattr(torch_adapter, "get_worker_info", lambda: Info())
    ds = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2)
    ds.set_epoch(2)
    it = iter(ds)
    taken = [int(next(it)["id"]) for _ in range(40)]
    state = ds.state_dict()
    assert state["scope"] == "worker" and state["yielded"] == 40 and state["epoch"] == 2
    resumed = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2)
    resumed.load_state_dict(state)  # in a new worker, whose dataset copy is at epoch 0
    rest = [int(s["id"]) for s in resumed]
    whole = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2)
    whole.set_epoch(2)
    assert taken + rest == [int(s["id"]) for s in whole]
    assert len(list(resumed)) == 150, "the state was used once: the next iteration is a whole epoch"
    Info.id = 0
    wrong = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2)
    wrong.load_state_dict(state)
    with pytest.raises(ConfigError, match="worker 1 of 2"):
        next(iter(wrong))


def test_states_that_do_not_fit_are_refused(npz_uri):
    state = S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=1).state_dict()
    with pytest.raises(ConfigError, match="seed"):
        S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=2).load_state_dict(state)
    with pytest.raises(ConfigError, match="batches-mode"):
        S3IterableDataset(npz_uri, "npz", rows=True, shuffle=True, seed=1, batch_size=4).load_state_dict(state)
    ds = S3IterableDataset(npz_uri, "npz", rows=True)
    with pytest.raises(ConfigError, match="loader="):
        ds.state_dict(batches=3)


def test_state_loaded_after_persistent_workers_started_is_an_error(npz_uri):
    ds = S3IterableDataset(npz_uri, "npz", rows=True)
    loader = DataLoader(ds, batch_size=50, num_workers=2, persistent_workers=True)
    assert len(collect(loader)) == N
    ds.load_state_dict(ds.state_dict(batches=2, loader=loader))
    with pytest.raises(ConfigError, match="persistent workers"):
        collect(loader)


# ---------------------------------------------------------------------- construction, names


def test_constructors_and_bad_arguments(npz_uri, tmp_path):
    objects = [f"{npz_uri}part-{f}.npz" for f in (2, 0)]
    ds = S3IterableDataset.from_objects(objects, rows=True)
    assert collect(DataLoader(ds, batch_size=100)) == list(range(100, 150)) + list(range(50))
    engine = Dataset(npz_uri, "npz", rows=True)
    assert len(S3IterableDataset(engine)) == N and len(S3MapDataset(engine)) == N
    assert "mode='samples'" in repr(S3IterableDataset(engine))
    with pytest.raises(ConfigError, match="collate_fn"):
        S3IterableDataset(engine, collate_fn=s3dlio_collate)
    with pytest.raises(ConfigError, match="batch_size"):
        S3IterableDataset(engine, batch_size=0)
    with pytest.raises(ConfigError, match="rank"):
        S3IterableDataset(engine, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="format"):
        S3IterableDataset(engine, rows=False)
    with pytest.raises(ConfigError, match="on_error"):
        S3MapDataset(engine, on_error="skip")


def test_s3dlio_names_give_uint8_tensors_of_raw_objects(raw_uri):
    ds = ObjectStoreIterableDataset.from_prefix(raw_uri)
    items = list(ds)
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in items)
    assert sorted(int(bytes(t[:8].numpy())) for t in items) == list(range(40))
    as_bytes = ObjectStoreMapDataset(raw_uri, return_type="bytes")
    assert as_bytes[3] == raw_payload(3)
    from s3dlio_loader import compat

    assert compat.ObjectStoreIterableDataset is ObjectStoreIterableDataset
    with pytest.raises(ConfigError, match="return_type"):
        ObjectStoreMapDataset(raw_uri, return_type="reader")  # type: ignore[arg-type]


def test_importing_the_package_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import s3dlio_loader, s3dlio_loader.adapters, s3dlio_loader.compat
        from s3dlio_loader.compat import create_dataset
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        sys.modules["torch"] = None  # as if torch were not installed
        try:
            import s3dlio_loader.adapters.torch
        except s3dlio_loader.MissingDependencyError as exc:
            assert "pip install 's3dlio-loader[torch]'" in str(exc), exc
        else:
            raise AssertionError("no MissingDependencyError without torch")
        from s3dlio_loader.compat import create_async_loader  # the framework-free part still works
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_spawned_copies_keep_the_parents_rank(npz_uri, monkeypatch):
    """A spawned worker has no process group: the pickled dataset carries the parent's rank."""
    import pickle

    ds = S3IterableDataset(npz_uri, "npz", rows=True)
    monkeypatch.setattr(torch_adapter, "distributed_rank", lambda: (1, 2))
    copy = pickle.loads(pickle.dumps(ds))
    monkeypatch.setattr(torch_adapter, "distributed_rank", lambda: None)
    monkeypatch.delenv("RANK", raising=False)
    assert copy.resolve_rank() == (1, 2) and ds.resolve_rank() == (0, 1)
    assert [int(s["id"]) for s in copy] == list(range(1, N, 2))
    ds.set_epoch(4)
    assert copy.epoch == 0, "outside a process start, a pickled copy is independent"


def test_engine_workers_give_tensors_over_reused_shared_memory(npz_uri, raw_uri, monkeypatch):
    import gc
    import glob

    from s3dlio_loader.engine import shm

    prefixes = []  # the segments of this test's engines (other processes may have theirs)
    original_prefix = shm.new_prefix
    monkeypatch.setattr(shm, "new_prefix", lambda: prefixes.append(original_prefix()) or prefixes[-1])
    ds = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=16, shuffle=True, seed=3, engine_workers=2)
    batches = [ids_of(b) for b in DataLoader(ds, batch_size=None)]
    plain = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=16, shuffle=True, seed=3)
    assert batches == [ids_of(b) for b in DataLoader(plain, batch_size=None)], "the same plan, the same batches"
    it = iter(DataLoader(ds, batch_size=None))
    first = next(it)
    assert isinstance(first["x"], torch.Tensor) and first["x"].shape == (16, 4)
    assert len(prefixes) == 1, "the second epoch runs on the first epoch's workers and slots"
    taken = [ids_of(first)] + [ids_of(next(it)) for _ in range(3)]
    del it, first
    resumed = S3IterableDataset(npz_uri, "npz", rows=True, batch_size=16, shuffle=True, seed=3, engine_workers=1)
    resumed.load_state_dict(ds.state_dict(batches=4))
    assert taken + [ids_of(b) for b in DataLoader(resumed, batch_size=None)] == batches
    raw = S3IterableDataset(raw_uri, "raw", batch_size=8, engine_workers=2, collate_fn=S3Collate(bytes_as="tensor"))
    got = {int(bytes(t[:8].numpy())): bytes(t.numpy()) for b in DataLoader(raw, batch_size=None) for t in b}
    assert got == {i: raw_payload(i) for i in range(40)}
    assert glob.glob(f"/dev/shm/{prefixes[-1]}*"), "the workers wait for the next epoch with their slots"
    for dataset in (ds, resumed, raw):
        dataset.close()
    gc.collect()
    assert len(prefixes) == 3 and not [p for p in prefixes if glob.glob(f"/dev/shm/{p}*")], \
        "no segment outlives the engine"
    with pytest.raises(ConfigError, match="DataLoader\\(num_workers=0\\)"):
        list(DataLoader(ds, batch_size=None, num_workers=1))
    with pytest.raises(ConfigError, match="batch mode"):
        S3IterableDataset(npz_uri, "npz", rows=True, engine_workers=2)
