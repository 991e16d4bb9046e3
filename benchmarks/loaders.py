"""Loader paths over file://, each against a plain Python baseline measured in the same run.

Workloads (written to a temporary directory, read from the page cache):

* ``raw``: 2000 objects of 256 KiB. Baseline: ``open(path, "rb").read()`` in a loop; also shown:
  the same loop keeping each batch of 32 objects until the next (what a loader hands out).
* ``parquet``: 128 row groups of about 8 MiB (4 files of 32, 8 float32 columns, snappy).
  Baseline: ``pq.ParquetFile(path).read_row_group(i)`` for every row group (pyarrow decodes the
  columns of a row group on its own threads), each table turned into numpy columns.

Paths (one function each, returning table rows; frameworks are imported inside them):

* torch, sample mode: ``DataLoader(S3IterableDataset(uri), batch_size=B, num_workers=K)``;
* torch, batch mode: ``DataLoader(S3IterableDataset(uri, batch_size=B), batch_size=None,
  num_workers=K)`` (raw bytes as uint8 tensors in shared memory, ``S3Collate(bytes_as="tensor")``);
* torch, engine workers: ``DataLoader(S3IterableDataset(uri, batch_size=B, engine_workers=K),
  batch_size=None, num_workers=0)``: the engine's worker processes write batches into reused
  shared-memory slots, which arrive as tensors without a copy;
* Parquet, the torch paths again with ``mmap=True`` (decode from a private map of the file);
* s3dlio 0.10 when ``import s3dlio`` works: ``create_async_loader(uri, opts)`` items, and its
  ``ObjectStoreIterableDataset`` through a DataLoader (its workers do not shard: each reads
  everything, so only ``num_workers=0`` is measured).

Every path touches each sample (its length, or each column's shape) and runs a warm-up epoch
first (page cache, metadata cache, worker start with ``persistent_workers``); the figure is the
median of the timed epochs, the paths interleaved within each repetition.

Run: ``.venv/bin/python benchmarks/loaders.py [--objects 2000] [--row-groups 128] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KiB, MiB = 1 << 10, 1 << 20
OBJECT_SIZE = 256 * KiB
PARQUET_FILES = 4
PARQUET_COLUMNS = 8
BATCH = 32


@dataclass
class Data:
    """The workloads on disk."""

    root: str
    raw_paths: list[str] = field(default_factory=list)
    raw_bytes: int = 0
    parquet_paths: list[str] = field(default_factory=list)
    row_groups: int = 0
    parquet_bytes: int = 0  # decoded bytes of all row groups

    @property
    def raw_uri(self) -> str:
        return f"file://{self.root}/raw/"

    @property
    def parquet_uri(self) -> str:
        return f"file://{self.root}/parquet/"


@dataclass
class Row:
    """One path's figure for one workload."""

    workload: str
    path: str
    items: int
    nbytes: int
    seconds: float
    baseline: bool = False
    note: str = ""


# ---------------------------------------------------------------------- data


def write_raw(data: Data, count: int, size: int) -> None:
    os.makedirs(f"{data.root}/raw", exist_ok=True)
    pool = np.random.default_rng(0).integers(0, 256, size + count, dtype=np.uint8).tobytes()
    for i in range(count):
        path = f"{data.root}/raw/obj-{i:05d}.bin"
        with open(path, "wb") as f:
            f.write(pool[i : i + size])
        data.raw_paths.append(path)
    data.raw_bytes = count * size


def write_parquet(data: Data, row_groups: int, group_bytes: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(f"{data.root}/parquet", exist_ok=True)
    rows = group_bytes // (4 * PARQUET_COLUMNS)
    per_file = max(1, row_groups // PARQUET_FILES)
    rng = np.random.default_rng(1)
    made = 0
    for f in range(PARQUET_FILES):
        groups = min(per_file, row_groups - made) if f < PARQUET_FILES - 1 else row_groups - made
        if groups <= 0:
            break
        # Values on a coarse grid: compressible like real features, not like zeros.
        table = pa.table({f"c{c}": np.round(rng.standard_normal(rows * groups), 2).astype(np.float32)
                          for c in range(PARQUET_COLUMNS)})  # fmt: skip
        path = f"{data.root}/parquet/part-{f}.parquet"
        pq.write_table(table, path, row_group_size=rows, compression="snappy")
        data.parquet_paths.append(path)
        made += groups
    data.row_groups = made
    data.parquet_bytes = made * rows * 4 * PARQUET_COLUMNS


# ---------------------------------------------------------------------- helpers


def _epoch(iterate: Callable[[], Iterable[Any]], touch: Callable[[Any], tuple[int, int]]) -> tuple[float, int, int]:
    """Time one pass of ``iterate()``; ``touch(item)`` -> (samples, bytes) of each item."""
    t0 = time.perf_counter()
    items = nbytes = 0
    for item in iterate():
        n, b = touch(item)
        items += n
        nbytes += b
    return time.perf_counter() - t0, items, nbytes


def _touch_bytes_list(batch: Any) -> tuple[int, int]:
    return len(batch), sum(len(b) for b in batch)


def _touch_tensor_list(batch: Any) -> tuple[int, int]:
    return len(batch), sum(int(t.numel()) for t in batch)


def _touch_columns(item: Any) -> tuple[int, int]:
    """A decoded row group: a dict of column arrays/tensors."""
    return 1, sum(int(v.nbytes) for v in item.values())


class _Warm:
    """Runs each path's warm-up epoch once, the first time the path is measured."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def __call__(self, key: str, fn: Callable[[], Any]) -> None:
        if key not in self.done:
            fn()
            self.done.add(key)


warm = _Warm()


# ---------------------------------------------------------------------- raw paths


def raw_plain(data: Data) -> list[Row]:
    """Baseline: ``open().read()`` of every object."""

    def run() -> Iterable[bytes]:
        for path in data.raw_paths:
            with open(path, "rb") as f:
                yield f.read()

    def batches() -> Iterable[list[bytes]]:
        for i in range(0, len(data.raw_paths), BATCH):
            batch = []
            for path in data.raw_paths[i : i + BATCH]:
                with open(path, "rb") as f:
                    batch.append(f.read())
            yield batch

    warm("raw-plain", lambda: _epoch(run, lambda b: (1, len(b))))
    seconds, items, nbytes = _epoch(run, lambda b: (1, len(b)))
    rows = [Row("raw", "open().read() loop", items, nbytes, seconds, baseline=True)]
    # The same reads, each batch of BATCH objects kept until the next: what a loader hands out.
    seconds, items, nbytes = _epoch(batches, _touch_bytes_list)
    rows.append(Row("raw", f"open().read() loop, kept in lists of {BATCH}", items, nbytes, seconds))
    return rows


_torch_loaders: dict[str, Any] = {}


def _torch_loader(key: str, make: Callable[[], Any]) -> Any:
    """DataLoaders live for the whole run (persistent workers are started once, in the warm-up)."""
    if key not in _torch_loaders:
        _torch_loaders[key] = make()
    return _torch_loaders[key]


def raw_torch(data: Data, workers: tuple[int, ...] = (0, 2)) -> list[Row]:
    """Our torch paths over the raw objects, sample and batch mode, for each worker count."""
    from torch.utils.data import DataLoader

    from s3dlio_loader.adapters.torch import S3Collate, S3IterableDataset

    rows = []
    for k in workers:
        persistent = k > 0
        sample = _torch_loader(f"raw-sample-{k}", lambda k=k, p=persistent: DataLoader(
            S3IterableDataset(data.raw_uri, "raw"), batch_size=BATCH, num_workers=k, persistent_workers=p))
        batch = _torch_loader(f"raw-batch-{k}", lambda k=k, p=persistent: DataLoader(
            S3IterableDataset(data.raw_uri, "raw", batch_size=BATCH, collate_fn=S3Collate(bytes_as="tensor")),
            batch_size=None, num_workers=k, persistent_workers=p))
        paths = [
            (f"torch sample mode, DataLoader(batch_size={BATCH}, num_workers={k})", sample, _touch_bytes_list),
            (f"torch batch mode (uint8 tensors), DataLoader(num_workers={k})", batch, _touch_tensor_list),
        ]
        if k:
            engine = _torch_loader(f"raw-engine-{k}", lambda k=k: DataLoader(
                S3IterableDataset(data.raw_uri, "raw", batch_size=BATCH, engine_workers=k,
                                  collate_fn=S3Collate(bytes_as="tensor")), batch_size=None, num_workers=0))
            paths.append((f"torch batch mode (uint8 tensors), engine_workers={k}, DataLoader(num_workers=0)",
                          engine, _touch_tensor_list))
        for name, loader, touch in paths:
            warm(name, lambda loader=loader, touch=touch: _epoch(lambda: loader, touch))
            seconds, items, nbytes = _epoch(lambda loader=loader: loader, touch)
            rows.append(Row("raw", name, items, nbytes, seconds))
    return rows


def raw_s3dlio(data: Data) -> list[Row]:
    """s3dlio 0.10, if installed: its async loader's items, and its torch dataset with DataLoader(num_workers=0)."""
    try:
        import s3dlio
    except ImportError:
        return [Row("raw", "s3dlio", 0, 0, 0.0, note="not installed")]
    rows = []

    def items() -> Iterable[Any]:
        return s3dlio.create_async_loader(data.raw_uri, {"batch_size": BATCH, "prefetch": 8})

    warm("raw-s3dlio-items", lambda: _epoch(items, lambda b: (1, len(memoryview(b)))))
    seconds, n, nbytes = _epoch(items, lambda b: (1, len(memoryview(b))))
    rows.append(Row("raw", "s3dlio create_async_loader(...) items", n, nbytes, seconds))
    try:
        from s3dlio.torch import ObjectStoreIterableDataset
        from torch.utils.data import DataLoader
    except ImportError as exc:
        rows.append(Row("raw", "s3dlio torch dataset", 0, 0, 0.0, note=f"unavailable: {exc}"))
        return rows
    # Its items are s3dlio BytesView objects, which torch's default_collate refuses: keep them as a list.
    loader = DataLoader(ObjectStoreIterableDataset.from_prefix(data.raw_uri, prefetch=8, return_type="bytes"),
                        batch_size=BATCH, num_workers=0, collate_fn=list)  # fmt: skip

    def touch(batch: list[Any]) -> tuple[int, int]:
        return len(batch), sum(len(memoryview(b)) for b in batch)

    warm("raw-s3dlio-torch", lambda: _epoch(lambda: loader, touch))
    seconds, n, nbytes = _epoch(lambda: loader, touch)
    rows.append(Row("raw", f"s3dlio ObjectStoreIterableDataset, DataLoader(batch_size={BATCH}, num_workers=0)",
                    n, nbytes, seconds))  # fmt: skip
    return rows


# ---------------------------------------------------------------------- parquet paths


def parquet_pyarrow(data: Data) -> list[Row]:
    """Baseline: ``read_row_group`` of every row group, the table turned into numpy columns."""
    import pyarrow.parquet as pq

    def run() -> Iterable[dict[str, np.ndarray]]:
        for path in data.parquet_paths:
            pf = pq.ParquetFile(path)
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                yield {name: col.to_numpy() for name, col in zip(table.column_names, table.columns, strict=True)}

    def one_thread() -> Iterable[dict[str, np.ndarray]]:
        for path in data.parquet_paths:
            pf = pq.ParquetFile(path)
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, use_threads=False)
                yield {name: col.to_numpy() for name, col in zip(table.column_names, table.columns, strict=True)}

    warm("pq-pyarrow", lambda: _epoch(run, _touch_columns))
    seconds, items, nbytes = _epoch(run, _touch_columns)
    rows = [Row("parquet", "pyarrow read_row_group loop", items, nbytes, seconds, baseline=True)]
    seconds, items, nbytes = _epoch(one_thread, _touch_columns)
    rows.append(Row("parquet", "pyarrow read_row_group loop, use_threads=False (one core)", items, nbytes, seconds))
    return rows


def parquet_torch(data: Data, workers: tuple[int, ...] = (0, 2)) -> list[Row]:
    """Our torch path: one sample per row group, decoded to numpy columns in the worker, sent as tensors."""
    from torch.utils.data import DataLoader

    from s3dlio_loader.adapters.torch import S3IterableDataset

    rows = []
    for k in workers:
        loader = _torch_loader(f"pq-{k}", lambda k=k: DataLoader(
            S3IterableDataset(data.parquet_uri, "parquet", decode="numpy"), batch_size=None, num_workers=k,
            persistent_workers=k > 0))
        name = f"torch S3IterableDataset(decode='numpy'), DataLoader(batch_size=None, num_workers={k})"
        warm(name, lambda loader=loader: _epoch(lambda: loader, _touch_columns))
        seconds, items, nbytes = _epoch(lambda loader=loader: loader, _touch_columns)
        rows.append(Row("parquet", name, items, nbytes, seconds))
        if k:
            for mmap in (False, True):
                engine = _torch_loader(f"pq-engine-{k}-{mmap}", lambda k=k, mmap=mmap: DataLoader(
                    S3IterableDataset(data.parquet_uri, "parquet", decode="numpy", batch_size=1, engine_workers=k,
                                      mmap=mmap), batch_size=None, num_workers=0))  # fmt: skip
                name = (f"torch S3IterableDataset(decode='numpy', batch_size=1, engine_workers={k}"
                        f"{', mmap=True' if mmap else ''}), num_workers=0")  # fmt: skip
                warm(name, lambda engine=engine: _epoch(lambda: engine, _touch_columns))
                seconds, items, nbytes = _epoch(lambda engine=engine: engine, _touch_columns)
                rows.append(Row("parquet", name, items, nbytes, seconds))
        else:
            mapped = _torch_loader("pq-0-mmap", lambda: DataLoader(
                S3IterableDataset(data.parquet_uri, "parquet", decode="numpy", mmap=True), batch_size=None))
            name = "torch S3IterableDataset(decode='numpy', mmap=True), DataLoader(batch_size=None, num_workers=0)"
            warm(name, lambda mapped=mapped: _epoch(lambda: mapped, _touch_columns))
            seconds, items, nbytes = _epoch(lambda mapped=mapped: mapped, _touch_columns)
            rows.append(Row("parquet", name, items, nbytes, seconds))
    return rows


def parquet_s3dlio(data: Data) -> list[Row]:
    """s3dlio 0.10's Parquet mode, if installed: arrow decode, each row group parsed into numpy columns."""
    try:
        import pyarrow as pa
        import s3dlio
    except ImportError:
        return [Row("parquet", "s3dlio", 0, 0, 0.0, note="not installed")]

    def run() -> Iterable[dict[str, np.ndarray]]:
        loader = s3dlio.create_async_loader(data.parquet_uri, {"format": "parquet", "decode": "arrow", "prefetch": 4})
        for item in loader:
            payload = item["data"] if isinstance(item, dict) else item
            batch = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
            yield {name: col.to_numpy() for name, col in zip(batch.column_names, batch.columns, strict=True)}

    try:
        warm("pq-s3dlio", lambda: _epoch(run, _touch_columns))
    except Exception as exc:  # an s3dlio version without this mode
        return [Row("parquet", "s3dlio create_async_loader(format=parquet, decode=arrow)", 0, 0, 0.0,
                    note=f"failed: {type(exc).__name__}: {exc}")]  # fmt: skip
    seconds, items, nbytes = _epoch(run, _touch_columns)
    return [Row("parquet", "s3dlio create_async_loader(format=parquet, decode=arrow)", items, nbytes, seconds)]


# ---------------------------------------------------------------------- table

PATHS: dict[str, list[Callable[[Data], list[Row]]]] = {
    "raw": [raw_plain, raw_torch, raw_s3dlio],
    "parquet": [parquet_pyarrow, parquet_torch, parquet_s3dlio],
}


def run_all(data: Data, workloads: list[str], repeat: int) -> list[Row]:
    """Every path of ``workloads``, ``repeat`` times interleaved; one row per path with the median time."""
    runs: dict[tuple[str, str], list[Row]] = {}
    for _ in range(repeat):
        for workload in workloads:
            for fn in PATHS[workload]:
                for row in fn(data):
                    runs.setdefault((row.workload, row.path), []).append(row)
    out = []
    for rows in runs.values():
        first = rows[0]
        seconds = statistics.median(r.seconds for r in rows)
        out.append(Row(first.workload, first.path, first.items, first.nbytes, seconds, first.baseline, first.note))
    return out


def print_table(rows: list[Row]) -> None:
    print(f"{'workload':<8} {'path':<104} {'items/s':>10} {'MB/s':>9} {'vs baseline':>11}")
    for workload in dict.fromkeys(r.workload for r in rows):
        group = [r for r in rows if r.workload == workload]
        base = next((r for r in group if r.baseline), None)
        for r in group:
            if r.note:
                print(f"{workload:<8} {r.path:<104} {r.note:>32}")
                continue
            rate = r.items / r.seconds
            ratio = f"{base.seconds / r.seconds:.2f}x" if base is not None and r.seconds else "-"
            print(f"{workload:<8} {r.path:<104} {rate:>10,.0f} {r.nbytes / 1e6 / r.seconds:>9,.0f} {ratio:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=2000, help="raw objects of 256 KiB (default 2000)")
    parser.add_argument("--row-groups", type=int, default=128, help="parquet row groups (default 128)")
    parser.add_argument("--row-group-mib", type=float, default=8, help="decoded MiB per row group (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per path (default 3)")
    parser.add_argument("--only", choices=sorted(PATHS), action="append", help="run only this workload")
    parser.add_argument("--dir", help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()
    workloads = args.only or list(PATHS)
    from s3dlio_loader.engine.allocator import tune_allocator

    # Our paths set malloc's thresholds in this process on their first read (engine/allocator.py):
    # set them before any path runs, so that every repetition of every path sees the same process.
    tune_allocator()
    with tempfile.TemporaryDirectory(prefix="s3dlio-bench-", dir=args.dir) as root:
        data = Data(root)
        if "raw" in workloads:
            write_raw(data, args.objects, OBJECT_SIZE)
        if "parquet" in workloads:
            write_parquet(data, args.row_groups, int(args.row_group_mib * MiB))
        print(f"raw: {len(data.raw_paths)} x {OBJECT_SIZE // KiB} KiB; parquet: {data.row_groups} row groups "
              f"({data.parquet_bytes / MiB:.0f} MiB decoded) in {len(data.parquet_paths)} files; "
              f"{os.cpu_count()} cores; median of {args.repeat}")  # fmt: skip
        print_table(run_all(data, workloads, args.repeat))
        for loader in _torch_loaders.values():
            loader.dataset.close()  # engine workers wait between epochs until closed
        _torch_loaders.clear()


if __name__ == "__main__":
    main()
