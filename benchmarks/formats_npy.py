"""NPY/NPZ benchmark: our readers against ``np.load`` on file:// data.

Data (written once into ``workdir``):

* 256 ``.npy`` files of 4 MiB (float32, 1024 x 1024);
* one 256 MiB ``.npy`` array (65 536 rows of 1 024 float32 = 4 KiB per row);
* 64 stored ``.npz`` files of 8 arrays of 512 KiB each (written by ``np.savez``).

Cases (ours and the baseline alternate within each repetition; medians are reported):

* ``npy-whole``: every file read whole. Ours: a fresh ``NpyReader(uri)[0]`` per file (no index:
  one GET per file, the index built from the bytes). Baseline ``np.load(path)``.
* ``npy-rows-random``: 64 batches of 256 rows at random positions. Ours:
  ``NpyReader(rows=True).read_batch`` through the Store (one range read per row, nearby rows
  merged). Baseline: ``np.load(mmap_mode="r")[indices]``.
* ``npy-rows-random-mmap``: the same with ``NpyReader(rows=True, mmap=True)``.
* ``npy-rows-seq``: 64 batches of 256 consecutive rows (one request per batch) against the same
  memory-mapped baseline.
* ``npz-stored``: every archive read whole into a dict of arrays. Ours: a fresh ``NpzReader(uri)[0]``
  (one GET, no index). Baseline: ``np.load(path)`` and every member read.

Run: ``.venv/bin/python benchmarks/formats_npy.py [workdir]``
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

MiB = 1 << 20
WHOLE_FILES = 256
WHOLE_SHAPE = (1024, 1024)  # float32: 4 MiB
ROWS_SHAPE = (65536, 1024)  # float32: 256 MiB, 4 KiB rows
BATCH = 256
BATCHES = 64
NPZ_FILES = 64
NPZ_MEMBERS = 8
NPZ_MEMBER_SHAPE = (128, 1024)  # float32: 512 KiB
REPEATS = 7


def _write_data(workdir: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    os.makedirs(workdir, exist_ok=True)
    whole = []
    for i in range(WHOLE_FILES):
        path = os.path.join(workdir, f"whole-{i:04d}.npy")
        if not os.path.exists(path):
            np.save(path, rng.standard_normal(WHOLE_SHAPE, dtype=np.float32))
        whole.append(path)
    rows = os.path.join(workdir, "rows.npy")
    if not os.path.exists(rows):
        np.save(rows, rng.standard_normal(ROWS_SHAPE, dtype=np.float32))
    npz = []
    for i in range(NPZ_FILES):
        path = os.path.join(workdir, f"arch-{i:03d}.npz")
        if not os.path.exists(path):
            arrays = {f"a{j}": rng.standard_normal(NPZ_MEMBER_SHAPE, dtype=np.float32) for j in range(NPZ_MEMBERS)}
            np.savez(path, **arrays)
        npz.append(path)
    return {"whole": whole, "rows": rows, "npz": npz}


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    nbytes = fn()
    return time.perf_counter() - t0, nbytes


def _compare(case: str, fmt: str, samples: int, ours: Callable[[], int], baseline_name: str,
             baseline: Callable[[], int]) -> dict[str, Any]:
    ours()  # warm the page cache and any lazy imports
    baseline()
    ours_t, base_t, nbytes = [], [], 0
    for _ in range(REPEATS):
        t, nbytes = _timed(ours)
        ours_t.append(t)
        base_t.append(_timed(baseline)[0])
    ot, bt = statistics.median(ours_t), statistics.median(base_t)
    return {
        "format": fmt,
        "case": case,
        "ours_samples_s": samples / ot,
        "ours_MBps": nbytes / ot / 1e6,
        "baseline": baseline_name,
        "baseline_samples_s": samples / bt,
        "ratio": bt / ot,
    }


def run(workdir: str) -> list[dict[str, Any]]:
    """One row per case: our samples/s and MB/s, the baseline's samples/s, the ratio (ours / baseline)."""
    from s3dlio_loader.formats.npy import NpyReader
    from s3dlio_loader.formats.npz import NpzReader
    from s3dlio_loader.storage import Store

    data = _write_data(workdir)
    store = Store.from_uri(f"file://{workdir}")
    rows_out: list[dict[str, Any]] = []

    whole_uris = [f"file://{p}" for p in data["whole"]]

    def ours_whole() -> int:
        return sum(NpyReader(u, store=store)[0].nbytes for u in whole_uris)

    def numpy_whole() -> int:
        return sum(np.load(p).nbytes for p in data["whole"])

    rows_out.append(_compare("npy-whole (256 x 4 MiB)", "npy", WHOLE_FILES, ours_whole, "np.load", numpy_whole))

    rng = np.random.default_rng(1)
    n_rows = ROWS_SHAPE[0]
    random_batches = [rng.integers(0, n_rows, BATCH).tolist() for _ in range(BATCHES)]
    starts = rng.integers(0, n_rows - BATCH, BATCHES)
    seq_batches = [list(range(int(s), int(s) + BATCH)) for s in starts]
    rows_uri = f"file://{data['rows']}"
    by_store = NpyReader(rows_uri, rows=True, store=store)
    by_mmap = NpyReader(rows_uri, rows=True, mmap=True, store=store)
    len(by_store), len(by_mmap)  # build the indexes outside the timed loops
    mapped = np.load(data["rows"], mmap_mode="r")

    def ours_rows(reader: NpyReader, batches: list[list[int]]) -> Callable[[], int]:
        def go() -> int:
            total = 0
            for batch in batches:
                total += sum(r.nbytes for r in reader.read_batch(batch))
            return total

        return go

    def numpy_rows(batches: list[list[int]]) -> Callable[[], int]:
        def go() -> int:
            return sum(mapped[np.asarray(b)].nbytes for b in batches)

        return go

    samples = BATCH * BATCHES
    baseline = 'np.load(mmap_mode="r")[idx]'
    rows_out.append(_compare("npy-rows-random (256-row batches)", "npy", samples,
                             ours_rows(by_store, random_batches), baseline, numpy_rows(random_batches)))
    rows_out.append(_compare("npy-rows-random-mmap (256-row batches)", "npy", samples,
                             ours_rows(by_mmap, random_batches), baseline, numpy_rows(random_batches)))
    rows_out.append(_compare("npy-rows-seq (256-row batches)", "npy", samples,
                             ours_rows(by_store, seq_batches), baseline, numpy_rows(seq_batches)))  # fmt: skip

    npz_uris = [f"file://{p}" for p in data["npz"]]

    def ours_npz() -> int:
        return sum(sum(a.nbytes for a in NpzReader(u, store=store)[0].values()) for u in npz_uris)

    def numpy_npz() -> int:
        total = 0
        for p in data["npz"]:
            with np.load(p) as z:
                total += sum(z[k].nbytes for k in z.files)
        return total

    rows_out.append(_compare("npz-stored (64 x 8 x 512 KiB)", "npz", NPZ_FILES, ours_npz, "np.load", numpy_npz))
    return rows_out


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':42} {'ours/s':>10} {'ours MB/s':>10} {'baseline':>30} {'base/s':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:42} {r['ours_samples_s']:10.0f} {r['ours_MBps']:10.0f} {r['baseline']:>30} "
              f"{r['baseline_samples_s']:10.0f} {r['ratio']:6.2f}")


if __name__ == "__main__":
    _print(run(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "s3dlio-bench-npy")))
