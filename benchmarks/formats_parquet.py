"""Parquet read throughput: ParquetReader vs pyarrow's own row-group loop, on file://.

Two files of 128 row groups of ~8 MiB (5 numeric columns, one dictionary-encoded),
uncompressed and snappy, read whole (page cache warm). Each repetition reads every row
group with every case, the cases alternating every 8 row groups; the table shows the
medians of the repetitions' totals.

Cases:

* ``arrow``: ``reader[i]`` for every row group (decode="arrow"), vs
  ``pq.ParquetFile(path).read_row_group(i)`` for every i.
* ``arrow batch8``: ``reader.read_batch`` of 8 row groups at a time, same baseline.
* ``raw``: ``reader[i]`` with decode="raw" (the column-chunk bytes, no decode), vs the same
  pyarrow loop, and vs ``os.pread`` of each row group's byte range into a fresh bytes
  object (the floor for reading bytes through a Store that returns new buffers).

Run: ``.venv/bin/python benchmarks/formats_parquet.py [workdir]``
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s3dlio_loader.formats.parquet import ParquetReader
from s3dlio_loader.storage import Store

ROW_GROUPS = 128
ROWS_PER_GROUP = 286_720  # ~8 MiB per row group uncompressed with the columns below
REPS = 5


def _row_group(i: int, rng: np.random.Generator) -> pa.Table:
    n = ROWS_PER_GROUP
    return pa.table({
        "id": np.arange(i * n, (i + 1) * n, dtype=np.int64),
        "x": rng.random(n),
        "y": rng.random(n, dtype=np.float32),
        "k": rng.integers(0, 1000, n, dtype=np.int32),
        "v": rng.normal(size=n),
    })


def make_file(path: str, compression: str) -> None:
    """Write the benchmark file (skipped when it already exists with the expected layout)."""
    if os.path.exists(path):
        try:
            md = pq.read_metadata(path)
            if md.num_row_groups == ROW_GROUPS and md.row_group(0).num_rows == ROWS_PER_GROUP:
                return
        except (OSError, pa.ArrowException):
            pass
    rng = np.random.default_rng(0)
    tmp = f"{path}.tmp"
    with pq.ParquetWriter(tmp, _row_group(0, rng).schema, compression=compression, use_dictionary=["k"]) as w:
        for i in range(ROW_GROUPS):
            w.write_table(_row_group(i, rng), row_group_size=ROWS_PER_GROUP)
    os.replace(tmp, path)


UNIT = 8  # row groups per interleaving step (and per read_batch call)


def run(workdir: str) -> list[dict[str, Any]]:
    """Benchmark rows (see the module docstring); files are created in ``workdir``.

    Ours and the baselines alternate every ``UNIT`` row groups (not every whole pass), so
    that other load on the machine falls on all of them alike.
    """
    os.makedirs(workdir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for compression in ("none", "snappy"):
        path = os.path.join(workdir, f"parquet_bench_{compression}.parquet")
        make_file(path, compression)
        uri = f"file://{path}"
        store = Store.from_uri(uri)
        info = store.stat(uri)
        probe = ParquetReader(uri, store=store, info=info)
        data_bytes = int(probe.index.chunk_length.sum())
        starts = probe.index.chunk_start.min(axis=1).tolist()
        lengths = probe.index.chunk_length.sum(axis=1).tolist()
        groups = probe.index.num_row_groups

        # Each case: open() -> state, step(state, first, last) reads row groups [first, last).
        def open_ours(decode: str, uri: str = uri, store: Store = store, info: Any = info) -> Any:
            reader = ParquetReader(uri, store=store, info=info, decode=decode)  # type: ignore[arg-type]
            len(reader)  # builds the index (one range request): part of the timed work
            return reader

        def each(reader: Any, a: int, b: int) -> None:
            for i in range(a, b):
                reader[i]

        def batch(reader: Any, a: int, b: int) -> None:
            reader.read_batch(range(a, b))

        def open_pyarrow(path: str = path) -> Any:
            return pq.ParquetFile(path)

        def pyarrow_step(pf: Any, a: int, b: int) -> None:
            for i in range(a, b):
                pf.read_row_group(i)

        def open_fd(path: str = path) -> int:
            return os.open(path, os.O_RDONLY)

        def pread_step(fd: int, a: int, b: int, starts: list[int] = starts, lengths: list[int] = lengths) -> None:
            for i in range(a, b):
                os.pread(fd, lengths[i], starts[i])

        cases: dict[str, tuple[Callable[[], Any], Callable[[Any, int, int], None]]] = {
            "arrow": (lambda: open_ours("arrow"), each),
            "arrow batch8": (lambda: open_ours("arrow"), batch),
            "raw": (lambda: open_ours("raw"), each),
            "pyarrow read_row_group": (open_pyarrow, pyarrow_step),
            "os.pread": (open_fd, pread_step),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for rep in range(REPS + 1):  # the first repetition warms caches and allocators; not counted
            total = dict.fromkeys(cases, 0.0)
            total_cpu = dict.fromkeys(cases, 0.0)
            state = {}
            for name, (opener, _) in cases.items():
                t0, c0 = time.perf_counter(), time.process_time()
                state[name] = opener()
                total[name] += time.perf_counter() - t0
                total_cpu[name] += time.process_time() - c0
            for a in range(0, groups, UNIT):
                b = min(groups, a + UNIT)
                for name, (_, step) in cases.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    step(state[name], a, b)
                    total[name] += time.perf_counter() - t0
                    total_cpu[name] += time.process_time() - c0
            os.close(state["os.pread"])
            if rep:
                for name in cases:
                    times[name].append(total[name])
                    cpu[name].append(total_cpu[name])
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        for case, baseline in (("arrow", "pyarrow read_row_group"), ("arrow batch8", "pyarrow read_row_group"),
                               ("raw", "pyarrow read_row_group"), ("raw", "os.pread")):
            rows.append({
                "format": "parquet",
                "case": f"{case}, {compression}",
                "ours_samples_s": groups / med[case],
                "ours_MBps": data_bytes / med[case] / 1e6,
                "baseline": baseline,
                "baseline_samples_s": groups / med[baseline],
                "baseline_MBps": data_bytes / med[baseline] / 1e6,
                "ratio": med[baseline] / med[case],
                # CPU seconds (all threads) of the baseline / ours: less sensitive to other load.
                "cpu_ratio": med_cpu[baseline] / med_cpu[case],
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'case':22s} {'ours rg/s':>10s} {'ours MB/s':>10s}  {'baseline':24s} {'rg/s':>8s} {'MB/s':>8s} "
            f"{'ratio':>6s} {'cpu ratio':>9s}")
    print(head)
    for r in rows:
        print(f"{r['case']:22s} {r['ours_samples_s']:10.1f} {r['ours_MBps']:10.0f}  {r['baseline']:24s} "
              f"{r['baseline_samples_s']:8.1f} {r['baseline_MBps']:8.0f} {r['ratio']:6.2f} {r['cpu_ratio']:9.2f}")


if __name__ == "__main__":
    work = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "s3dlio-bench-parquet")
    print_table(run(work))
