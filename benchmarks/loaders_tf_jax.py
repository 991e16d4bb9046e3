"""TensorFlow and JAX paths over file://: our tf.data dataset and JaxLoader vs a plain read loop, in one run.

Datasets (written to a temporary directory, read from the page cache):

* ``raw``: 2000 objects of 256 KiB.
* ``npz``: 2000 .npz objects, each one 256 KiB ``uint8`` array (a sample is the whole object).

Paths, each iterating one whole epoch and touching every batch:

* ``open().read()``: the plain Python loop over the same files (the baseline, measured before
  and after the others), and ``np.load`` per file for npz.
* ``engine Loader``: the framework-free :class:`~s3dlio_loader.Loader` (numpy batches), for the
  adapters' own overhead.
* ``tf.data``: :func:`s3dlio_loader.adapters.tf.tf_dataset` — raw objects as ``tf.string``
  (TensorFlow copies strings), raw objects as ``uint8`` tensors (``transform=bytes_to_arrays``),
  and npz arrays.
* ``jax``: :class:`s3dlio_loader.adapters.jax.JaxLoader` (``uint8`` / npz arrays as ``jax.Array``
  on the CPU device, ``block_until_ready`` on each batch).

TensorFlow runs first: once JAX has initialised its backend, the loader's workers are started with
forkserver instead of fork (see the JAX adapter), which would slow every later epoch's start.
Frameworks are imported inside the functions, never at the top: forkserver workers import this
file.

Run: ``.venv/bin/python benchmarks/loaders_tf_jax.py [--quick] [--workers 2] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

KiB = 1 << 10
SIZE = 256 * KiB


def write_datasets(root: str, count: int) -> dict[str, list[str]]:
    """``count`` raw objects and ``count`` .npz objects of SIZE bytes of data each; their paths."""
    from s3dlio_loader.formats import write

    rng = np.random.default_rng(0)
    paths: dict[str, list[str]] = {"raw": [], "npz": []}
    os.makedirs(f"{root}/raw")
    os.makedirs(f"{root}/npz")
    for i in range(count):
        data = rng.integers(0, 256, SIZE, dtype=np.uint8)
        with open(f"{root}/raw/obj-{i:05d}", "wb") as f:
            f.write(data.tobytes())
        write(f"file://{root}/npz/obj-{i:05d}.npz", {"x": data})
        paths["raw"].append(f"{root}/raw/obj-{i:05d}")
        paths["npz"].append(f"{root}/npz/obj-{i:05d}.npz")
    return paths


# ----------------------------------------------------------------------------- the paths (each returns samples read)


def plain_read(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += len(f.read()) > 0
    return n


def plain_np_load(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with np.load(p) as z:
            n += z["x"].size > 0
    return n


def engine_loader(uri: str, fmt: str, batch: int, workers: int) -> Callable[[], int]:
    from s3dlio_loader import Loader

    loader = Loader(uri, format=fmt, batch_size=batch, num_workers=workers)

    def run() -> int:
        n = 0
        for b in loader:
            n += len(b["x"]) if isinstance(b, dict) else len(b)
        return n

    return run


def tf_path(uri: str, fmt: str, batch: int, workers: int, as_uint8: bool = False) -> Callable[[], int]:
    from s3dlio_loader.adapters.jax import bytes_to_arrays
    from s3dlio_loader.adapters.tf import tf_dataset

    ds = tf_dataset(uri, format=fmt, batch_size=batch, num_workers=workers,
                    transform=bytes_to_arrays if as_uint8 else None)  # fmt: skip

    def run() -> int:
        n = 0
        for b in ds:
            t = b["x"] if isinstance(b, dict) else b
            n += int(t.shape[0])
        return n

    return run


def jax_path(uri: str, fmt: str, batch: int, workers: int) -> Callable[[], int]:
    from s3dlio_loader.adapters.jax import JaxLoader

    it = JaxLoader(uri, format=fmt, batch_size=batch, num_workers=workers)

    def run() -> int:
        n = 0
        for b in it:
            a = b["x"] if isinstance(b, dict) else b
            a.block_until_ready()
            n += int(a.shape[0])
        return n

    return run


# ----------------------------------------------------------------------------- measuring


def measure(fn: Callable[[], int], reps: int) -> tuple[float, int]:
    """(median seconds of one epoch, samples per epoch), after one untimed warm-up epoch."""
    samples = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        samples = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), samples


def row(path: str, dataset: str, seconds: float, samples: int) -> dict[str, Any]:
    return {"path": path, "dataset": dataset, "samples_s": samples / seconds, "MBps": samples * SIZE / seconds / 1e6}


def run_benchmarks(count: int = 2000, batch: int = 64, workers: int = 2, reps: int = 3) -> list[dict[str, Any]]:
    """Every path over both datasets; rows of {"path", "dataset", "samples_s", "MBps"}."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        paths = write_datasets(root, count)
        raw, npz = f"file://{root}/raw/", f"file://{root}/npz/"

        def add(path: str, dataset: str, fn: Callable[[], int]) -> None:
            seconds, samples = measure(fn, reps)
            rows.append(row(path, dataset, seconds, samples))
            print(f"  {path:<40} {dataset:<4} {samples / seconds:>10,.0f} samples/s", flush=True)

        add("open().read() (before)", "raw", lambda: plain_read(paths["raw"]))
        add("open().read() (before)", "npz", lambda: plain_read(paths["npz"]))
        add("np.load", "npz", lambda: plain_np_load(paths["npz"]))
        add(f"engine Loader, {workers} workers", "raw", engine_loader(raw, "raw", batch, workers))
        add(f"engine Loader, {workers} workers", "npz", engine_loader(npz, "npz", batch, workers))
        add(f"tf.data tf.string, {workers} workers", "raw", tf_path(raw, "raw", batch, workers))
        add(f"tf.data uint8, {workers} workers", "raw", tf_path(raw, "raw", batch, workers, as_uint8=True))
        add(f"tf.data, {workers} workers", "npz", tf_path(npz, "npz", batch, workers))
        add(f"jax (forkserver), {workers} workers", "raw", jax_path(raw, "raw", batch, workers))
        add(f"jax (forkserver), {workers} workers", "npz", jax_path(npz, "npz", batch, workers))
        add("open().read() (after)", "raw", lambda: plain_read(paths["raw"]))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    base = {r["dataset"]: r["samples_s"] for r in rows if r["path"].startswith("open().read() (before)")}
    print(f"\n{'path':<40} {'dataset':<8} {'samples/s':>10} {'MB/s':>8} {'vs open().read()':>17}")
    for r in rows:
        ratio = r["samples_s"] / base[r["dataset"]] if r["dataset"] in base else float("nan")
        print(f"{r['path']:<40} {r['dataset']:<8} {r['samples_s']:>10,.0f} {r['MBps']:>8,.0f} {ratio:>16.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 objects, 1 timed epoch")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    count, reps = (200, 1) if args.quick else (args.count, args.reps)
    print(f"{count} objects of {SIZE // KiB} KiB on file://, batch {args.batch}, {args.workers} workers, "
          f"median of {reps} epochs after a warm-up epoch")  # fmt: skip
    print_table(run_benchmarks(count, args.batch, args.workers, reps))


if __name__ == "__main__":
    main()
