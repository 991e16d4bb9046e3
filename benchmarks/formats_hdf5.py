"""HDF5 benchmark: our reader's read_batch against plain h5py slicing, on file:// data.

A 256 MiB dataset of 4096 rows of 64 KiB (float32 rows of 16384 values), chunked by 64 rows,
written without a filter, with gzip, and with shuffle+gzip; plus a contiguous copy. Every row is
read in batches of 64 consecutive rows, by ``HDF5Reader.read_batch`` and by ``f[name][a:b]``
on a file opened once with h5py. The two alternate within each repetition (who goes first
alternates too) and the median of the repetitions is reported. Our figure includes building
the index (a fresh reader per repetition), as h5py's includes opening the file.

Run: ``.venv/bin/python benchmarks/formats_hdf5.py [workdir]``
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROWS = 4096
ROW_VALUES = 16384  # float32 -> 64 KiB per row, 256 MiB per dataset
BATCH = 64
REPEATS = 7

CASES: dict[str, dict[str, Any]] = {
    "chunked": {"chunks": BATCH},
    "chunked-gzip": {"chunks": BATCH, "compression": "gzip", "compression_opts": 1},
    "chunked-shuffle-gzip": {"chunks": BATCH, "compression": "gzip", "compression_opts": 1, "shuffle": True},
    "contiguous": {},
}


def _rows(seed: int = 0) -> np.ndarray:
    # Rounded normal values: gzip finds real work (about 4:1 with shuffle), unlike random bytes.
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.0, 8.0, (ROWS, ROW_VALUES))).astype(np.float32)


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def run(workdir: str) -> list[dict[str, Any]]:
    """One row per case: our samples/s and MB/s, h5py slicing's samples/s, and the ratio."""
    import h5py

    from s3dlio_loader.formats.hdf5 import HDF5Reader, write_hdf5
    from s3dlio_loader.storage import Store

    data = _rows()
    row_bytes = data[0].nbytes
    results = []
    for case, options in CASES.items():
        uri = f"file://{workdir}/bench-{case}.h5"
        store = Store.from_uri(uri)
        write_hdf5(uri, {"x": data}, store=store, **options)
        path = uri.removeprefix("file://")

        def ours(uri: str = uri, store: Store = store) -> int:
            # A fresh reader each repetition: index build included, decoded-chunk cache cold.
            reader = HDF5Reader(uri, datasets="x", store=store)
            n = 0
            for a in range(0, ROWS, BATCH):
                n += len(reader.read_batch(range(a, min(a + BATCH, ROWS))))
            reader.close()
            return n

        def baseline(path: str = path) -> int:
            n = 0
            with h5py.File(path, "r") as f:
                dset = f["x"]
                for a in range(0, ROWS, BATCH):
                    n += len(dset[a : min(a + BATCH, ROWS)])
            return n

        ours()  # warm the page cache and imports for both
        baseline()
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for rep in range(REPEATS):
            pair = [("ours", ours), ("baseline", baseline)]
            for name, fn in pair if rep % 2 == 0 else pair[::-1]:  # alternate who goes first
                t, n = _time(fn)
                assert n == ROWS, (name, n)
                times[name].append(t)
        ours_t, base_t = times["ours"], times["baseline"]
        ours_s = ROWS / statistics.median(ours_t)
        base_s = ROWS / statistics.median(base_t)
        results.append({
            "format": "hdf5",
            "case": case,
            "ours_samples_s": round(ours_s, 1),
            "ours_MBps": round(ours_s * row_bytes / 1e6, 1),
            "baseline": "h5py f[x][a:b]",
            "baseline_samples_s": round(base_s, 1),
            "ratio": round(ours_s / base_s, 2),
        })
    return results


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["format", "case", "ours_samples_s", "ours_MBps", "baseline", "baseline_samples_s", "ratio"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _print_table(run(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="s3dlio-bench-hdf5-") as tmp:
            _print_table(run(tmp))
