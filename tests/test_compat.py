"""s3dlio-compatible ``create_dataset`` / ``create_async_loader``: every s3dlio option honoured, others refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from s3dlio_loader import ConfigError
from s3dlio_loader.compat import OPTION_DEFAULTS, CompatLoader, create_async_loader, create_dataset, parse_options
from s3dlio_loader.formats import write
from s3dlio_loader.formats.parquet import RawRowGroup

OBJECTS = 12


@pytest.fixture
def raw_uri(tmp_path):
    for i in range(OBJECTS):
        write(f"file://{tmp_path}/raw/obj-{i:03d}.bin", f"{i:04d}".encode() * 3, format="raw")
    return f"file://{tmp_path}/raw/"


@pytest.fixture
def parquet_uri(tmp_path):
    """Two files of 3 row groups of 4 rows: ``id`` (0..23), ``x`` float32, ``name`` string."""
    for f in range(2):
        ids = np.arange(f * 12, (f + 1) * 12)
        write(f"file://{tmp_path}/pq/part-{f}.parquet",
              {"id": ids, "x": ids.astype(np.float32), "name": [f"n{i}" for i in ids]}, row_group_size=4)  # fmt: skip
    return f"file://{tmp_path}/pq/"


def ident(item) -> int:
    return int(bytes(item[:4]))


def test_raw_items_and_batches_in_order(raw_uri):
    loader = create_async_loader(raw_uri)
    assert len(loader) == loader.len() == OBJECTS
    assert [ident(i) for i in loader] == list(range(OBJECTS))
    assert loader.get(-1) == b"0011" * 3 and loader[2] == b"0002" * 3
    assert loader.keys()[0].endswith("obj-000.bin")
    batched = create_async_loader(raw_uri, {"batch_size": 5})
    assert [len(b) for b in batched.batches()] == [5, 5, 2]
    dropped = create_async_loader(raw_uri, {"batch_size": 5, "drop_last": True})
    assert [len(b) for b in dropped.batches()] == [5, 5]
    with pytest.raises(IndexError):
        loader.get(OBJECTS)


def test_shuffle_and_seed_are_honoured(raw_uri):
    def order(**opts):
        return [ident(i) for i in create_async_loader(raw_uri, {"batch_size": 4, **opts})]

    shuffled = order(shuffle=True, seed=1)
    assert sorted(shuffled) == list(range(OBJECTS)) and shuffled != list(range(OBJECTS))
    assert order(shuffle=True, seed=1) == shuffled and order(shuffle=True, seed=2) != shuffled
    loader = create_async_loader(raw_uri, {"shuffle": True, "seed": 1})
    first, second = [ident(i) for i in loader], [ident(i) for i in loader]
    assert first == shuffled and second != first, "a second pass is the next epoch"


def test_worker_processes_and_prefetch(raw_uri):
    with create_async_loader(raw_uri, {"num_workers": 2, "batch_size": 3, "prefetch": 6}) as loader:
        assert loader.loader.options.prefetch_batches == 2 and loader.dataset.io_threads == 6
        items = list(loader)
    assert sorted(ident(i) for i in items) == list(range(OBJECTS))


def test_async_iteration_yields_batches(raw_uri):
    async def run() -> list[list[int]]:
        return [[ident(i) for i in batch] async for batch in create_async_loader(raw_uri, {"batch_size": 4})]

    assert asyncio.run(run()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_raw_decode_callable(raw_uri):
    loader = create_dataset(raw_uri, {"decode": lambda b: int(b[:4])})
    assert [loader.get(i) for i in range(3)] == [0, 1, 2]


def test_parquet_row_groups_in_each_decode_mode(parquet_uri):
    raw = create_dataset(parquet_uri, {"format": "parquet"})
    assert len(raw) == 6 and raw.keys()[1].endswith("part-0.parquet#rg1")
    group = raw.get(1)
    assert isinstance(group, RawRowGroup) and group.decode()["id"].to_pylist() == [4, 5, 6, 7]
    arrow = create_dataset(parquet_uri, {"format": "parquet", "decode": "arrow", "columns": [0, 2]})
    table = arrow.get(5)
    assert isinstance(table, pa.Table) and table.column_names == ["id", "name"]
    assert table["id"].to_pylist() == [20, 21, 22, 23]
    numpy = create_async_loader(parquet_uri, {"format": "parquet", "decode": "numpy", "columns": ["x"],
                                              "footer_cap": 64, "batch_size": 2, "shuffle": True})  # fmt: skip
    groups = [g for batch in numpy.batches() for g in batch]
    assert sorted(float(g["x"][0]) for g in groups) == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    assert set(groups[0]) == {"x"}


def test_unknown_keys_are_named(raw_uri):
    with pytest.raises(ConfigError, match="unknown option 'batchsize'"):
        create_async_loader(raw_uri, {"batchsize": 4})
    with pytest.raises(ConfigError, match=r"create_dataset: unknown option 'part_size'.*range_chunk"):
        create_dataset(raw_uri, {"part_size": 1 << 20})
    with pytest.raises(ConfigError, match=r"'decode_mode' \(use 'decode'\)"):
        parse_options({"decode_mode": "raw"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"prefetch": "8"}, "prefetch must be an integer"),
        ({"num_workers": True}, "num_workers must be an integer"),
        ({"drop_last": 1}, "drop_last must be a bool"),
        ({"shuffle": "sometimes"}, "shuffle must be one of"),
        ({"columns": [0]}, "'columns' applies to format='parquet'"),
        ({"format": "parquet", "decode": "ipc"}, "decode must be one of"),
        ({"format": "npz", "decode": "raw"}, "decode applies to"),
        ({"format": "parquet", "footer_cap": 4}, "footer_cap must be an integer >= 8"),
    ],
)
def test_bad_values(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_options(options)


def test_defaults_and_repr(raw_uri):
    assert parse_options(None) == OPTION_DEFAULTS
    loader = create_async_loader(raw_uri, {"batch_size": 3})
    assert isinstance(loader, CompatLoader) and "batch_size" in repr(loader)
    state = loader.state_dict()
    loader.load_state_dict(state)
    loader.set_epoch(2)
    assert loader.loader.epoch == 2
