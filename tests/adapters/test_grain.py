"""The grain data source: grain's RandomAccessDataSource protocol over every format.

The protocol tests run without grain; the tests at the end drive the source with real grain
(``grain.MapDataset`` and ``grain.DataLoader``) and are skipped while grain is not installed.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import multiprocess
import numpy as np
import pytest

from s3dlio_loader import ConfigError, Dataset
from s3dlio_loader.adapters.grain import GrainSource
from s3dlio_loader.formats import write

N = 30  # samples of every dataset below; sample i carries the id i


def _npy(root: str) -> dict[str, Any]:
    for f in range(3):
        write(f"{root}/p{f}.npy", np.arange(f * 10, f * 10 + 10, dtype=np.int64)[:, None].repeat(4, axis=1))
    return {"format": "npy", "rows": True}


def _npz(root: str) -> dict[str, Any]:
    for f in range(3):
        ids = np.arange(f * 10, f * 10 + 10, dtype=np.int64)
        write(f"{root}/p{f}.npz", {"id": ids, "x": np.ones((10, 2), np.float32)})
    return {"format": "npz", "rows": True}


def _raw(root: str) -> dict[str, Any]:
    for i in range(N):
        write(f"{root}/obj-{i:03d}", f"sample {i}".encode(), format="raw")
    return {"format": "raw"}


def _parquet(root: str) -> dict[str, Any]:
    for f in range(2):
        write(f"{root}/p{f}.parquet", {"id": list(range(f * 15, f * 15 + 15)), "s": [f"r{i}" for i in range(15)]},
              row_group_size=4)  # fmt: skip
    return {"format": "parquet", "items": "row", "decode": "numpy"}


def _tfrecord(root: str) -> dict[str, Any]:
    for f in range(2):
        write(f"{root}/p{f}.tfrecord", [{"id": i} for i in range(f * 15, f * 15 + 15)])
    return {"format": "tfrecord", "features": {"id": ("int64", ())}}


def _hdf5(root: str) -> dict[str, Any]:
    for f in range(3):
        write(f"{root}/p{f}.h5", {"id": np.arange(f * 10, f * 10 + 10), "x": np.zeros((10, 3), np.float32)})
    return {"format": "hdf5"}


WRITERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "npy": _npy, "npz": _npz, "raw": _raw, "parquet": _parquet, "tfrecord": _tfrecord, "hdf5": _hdf5,
}  # fmt: skip


def sample_id(sample: Any) -> int:
    if isinstance(sample, bytes):
        return int(sample.split()[1])
    if isinstance(sample, dict):
        return int(np.asarray(sample["id"]).reshape(-1)[0])
    return int(np.asarray(sample).reshape(-1)[0])


@pytest.fixture(params=list(WRITERS))
def source(request, tmp_path) -> GrainSource:
    kwargs = WRITERS[request.param](f"file://{tmp_path}")
    return GrainSource(f"file://{tmp_path}/", **kwargs)


def test_protocol_over_every_format(source):
    assert len(source) == N
    assert [sample_id(source[i]) for i in range(N)] == list(range(N))
    assert sample_id(source[-1]) == N - 1
    assert sample_id(source[np.int64(7)]) == 7
    keys = [29, 0, 14, 15, 3, 3]
    assert [sample_id(s) for s in source.__getitems__(keys)] == keys
    with pytest.raises(IndexError, match="out of range"):
        source[N]
    with pytest.raises(IndexError):
        source.__getitems__([0, -N - 1])


def test_batched_reads_go_through_one_read_samples_call(tmp_path, monkeypatch):
    _npz(f"file://{tmp_path}")
    src = GrainSource(f"file://{tmp_path}/", format="npz", rows=True)
    calls = []
    real = Dataset.read_samples
    monkeypatch.setattr(Dataset, "read_samples", lambda self, ids: calls.append(list(ids)) or real(self, ids))
    assert [sample_id(s) for s in src.__getitems__([5, 25, 6])] == [5, 25, 6]
    assert calls == [[5, 25, 6]]


def test_pickles_and_reads_in_worker_processes(tmp_path):
    _npz(f"file://{tmp_path}")
    src = GrainSource(f"file://{tmp_path}/", format="npz", rows=True, transform=_add_tag)
    assert src[3]["tag"] == "seen"  # used (readers opened) in the parent before the workers start
    clone = pickle.loads(pickle.dumps(src))
    assert sample_id(clone[4]) == 4
    for method in ("fork", "spawn"):
        with multiprocess.get_context(method).Pool(1) as pool:
            got = pool.map(_read_id, [(src, i) for i in range(0, N, 3)])
        assert got == list(range(0, N, 3)), method


def _add_tag(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "tag": "seen"}


def _read_id(args: tuple[GrainSource, int]) -> int:
    src, i = args
    sample = src[i]
    assert sample["tag"] == "seen"
    return sample_id(sample)


def test_wraps_an_existing_dataset_and_refuses_skipping(tmp_path):
    _raw(f"file://{tmp_path}")
    ds = Dataset(f"file://{tmp_path}/", format="raw")
    assert sample_id(GrainSource(ds)[12]) == 12
    with pytest.raises(ConfigError, match="one record per key"):
        GrainSource(f"file://{tmp_path}/", format="raw", on_error="skip")
    with pytest.raises(ConfigError, match="one record per key"):
        GrainSource(Dataset(f"file://{tmp_path}/", format="raw", on_error="skip"))


# ----------------------------------------------------------------------------- with real grain


def test_grain_map_dataset(tmp_path):
    grain = pytest.importorskip("grain")
    _npz(f"file://{tmp_path}")
    src = GrainSource(f"file://{tmp_path}/", format="npz", rows=True)
    ds = grain.MapDataset.source(src).shuffle(seed=3).map(lambda s: s["id"]).batch(8)
    ids = [int(i) for batch in ds for i in np.asarray(batch)]
    assert sorted(ids) == list(range(N))
    assert ids != list(range(N))


@pytest.mark.parametrize("worker_count", [0, 2])
def test_grain_data_loader_shards(tmp_path, worker_count):
    grain = pytest.importorskip("grain")
    from absl import flags

    # grain's worker processes read absl flags; a program run through absl.app has parsed
    # them, pytest has not.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    _npz(f"file://{tmp_path}")
    src = GrainSource(f"file://{tmp_path}/", format="npz", rows=True)
    shards = []
    for index in range(2):
        sampler = grain.samplers.IndexSampler(
            num_records=len(src), shard_options=grain.sharding.ShardOptions(shard_index=index, shard_count=2),
            shuffle=True, num_epochs=1, seed=0,
        )  # fmt: skip
        loader = grain.DataLoader(data_source=src, sampler=sampler, operations=[grain.transforms.Batch(batch_size=5)],
                                  worker_count=worker_count)  # fmt: skip
        shards.append([int(i) for batch in loader for i in np.asarray(batch["id"])])
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(N))
