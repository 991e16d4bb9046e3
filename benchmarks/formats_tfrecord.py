"""TFRecord benchmark: our reader against ``tf.data.TFRecordDataset`` (and the PyPI ``tfrecord`` package).

Two files on file://, written by our writer (the bytes are TensorFlow's): 100 000 Examples of
about 1 KiB (an 800-byte ``image``, an int64 ``label``, a 32-float ``vec``) and 2 000 raw records
of 256 KiB. Each case reads every record of a file once; ours uses a fresh reader each time (the
index scan is included) and the baseline a fresh dataset. The two alternate within each
repetition; the median of the repetitions is reported.

Cases:

* ``raw``: records as bytes. Ours iterates the reader; TensorFlow iterates the dataset (eager
  tensors, not converted to bytes: the conversion would only slow it down).
* ``raw-batch256``: ours ``read_batch`` of 256 records; TensorFlow ``.batch(256)``.
* ``example``: decoded into a dict of numpy values with a fixed spec; TensorFlow maps
  ``tf.io.parse_single_example`` (``num_parallel_calls=AUTOTUNE``) and iterates.
* ``example-batch256``: ours ``read_batch`` of 256 decoded records; TensorFlow ``.batch(256)``
  then the vectorised ``tf.io.parse_example``.

TensorFlow is imported once (about 6 s). Run: ``.venv/bin/python benchmarks/formats_tfrecord.py [workdir]``
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

SMALL_RECORDS = 100_000
LARGE_RECORDS = 2_000
LARGE_SIZE = 256 * 1024
BATCH = 256
REPEATS = 3
SPEC = {"image": ("bytes", ()), "label": ("int64", ()), "vec": ("float32", (32,))}


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def _write_data(workdir: str) -> dict[str, str]:
    from s3dlio_loader.formats.tfrecord import write_tfrecord
    from s3dlio_loader.storage import Store

    rng = np.random.default_rng(0)
    small = f"file://{workdir}/bench-examples.tfrecord"
    large = f"file://{workdir}/bench-large.tfrecord"
    store = Store.from_uri(small)
    vec = np.arange(32, dtype=np.float32)
    write_tfrecord(small, ({"image": rng.bytes(800), "label": i, "vec": vec} for i in range(SMALL_RECORDS)),
                   store=store)  # fmt: skip
    write_tfrecord(large, (rng.bytes(LARGE_SIZE) for _ in range(LARGE_RECORDS)), store=store)
    return {"small": small, "large": large}


def run(workdir: str) -> list[dict[str, Any]]:
    """One row per (case, baseline): our samples/s and MB/s, the baseline's samples/s, the ratio."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from s3dlio_loader.formats.tfrecord import TFRecordReader
    from s3dlio_loader.storage import Store

    try:
        import tfrecord as pypi_tfrecord  # type: ignore[import-not-found]
    except ImportError:
        pypi_tfrecord = None

    uris = _write_data(workdir)
    store = Store.from_uri(uris["small"])
    tf_spec = {"image": tf.io.FixedLenFeature((), tf.string), "label": tf.io.FixedLenFeature((), tf.int64),
               "vec": tf.io.FixedLenFeature((32,), tf.float32)}  # fmt: skip

    def ours_iter(uri: str, **kw: Any) -> Callable[[], int]:
        return lambda: sum(1 for _ in TFRecordReader(uri, store=store, **kw))

    def ours_batches(uri: str, **kw: Any) -> Callable[[], int]:
        def go() -> int:
            reader = TFRecordReader(uri, store=store, **kw)
            n = len(reader)
            return sum(len(reader.read_batch(range(a, min(a + BATCH, n)))) for a in range(0, n, BATCH))

        return go

    def tf_raw(path: str) -> Callable[[], int]:
        return lambda: sum(1 for _ in tf.data.TFRecordDataset(path))

    def tf_raw_batches(path: str) -> Callable[[], int]:
        return lambda: sum(int(b.shape[0]) for b in tf.data.TFRecordDataset(path).batch(BATCH))

    def tf_parsed(path: str) -> Callable[[], int]:
        def go() -> int:
            ds = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, tf_spec),
                                                   num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
            return sum(1 for _ in ds)

        return go

    def tf_parsed_batches(path: str) -> Callable[[], int]:
        def go() -> int:
            ds = tf.data.TFRecordDataset(path).batch(BATCH).map(lambda r: tf.io.parse_example(r, tf_spec))
            return sum(int(b["label"].shape[0]) for b in ds)

        return go

    small, large = (u.removeprefix("file://") for u in (uris["small"], uris["large"]))
    cases: list[tuple[str, str, Callable[[], int], Callable[[], int]]] = [
        ("raw 100k x 1KiB", small, ours_iter(uris["small"]), tf_raw(small)),
        ("raw-batch256 100k x 1KiB", small, ours_batches(uris["small"]), tf_raw_batches(small)),
        ("example 100k x 1KiB", small, ours_iter(uris["small"], features=SPEC), tf_parsed(small)),
        ("example-batch256 100k x 1KiB", small, ours_batches(uris["small"], features=SPEC),
         tf_parsed_batches(small)),
        ("raw 2000 x 256KiB", large, ours_iter(uris["large"]), tf_raw(large)),
        ("raw-batch256 2000 x 256KiB", large, ours_batches(uris["large"]), tf_raw_batches(large)),
    ]  # fmt: skip
    results = []
    for case, path, ours, baseline in cases:
        size = os.path.getsize(path)
        ours_times, base_times = [], []
        for _ in range(REPEATS):
            t, n_ours = _time(ours)
            ours_times.append(t)
            t, n_base = _time(baseline)
            base_times.append(t)
            assert n_ours == n_base, (case, n_ours, n_base)
        ours_t, base_t = statistics.median(ours_times), statistics.median(base_times)
        results.append({
            "format": "tfrecord", "case": case, "ours_samples_s": n_ours / ours_t, "ours_MBps": size / ours_t / 1e6,
            "baseline": "tf.data.TFRecordDataset", "baseline_samples_s": n_base / base_t,
            "ratio": base_t / ours_t,
        })  # fmt: skip
        if case.startswith("raw ") or case.startswith("example "):
            row = {"format": "tfrecord", "case": case, "ours_samples_s": n_ours / ours_t,
                   "ours_MBps": size / ours_t / 1e6, "baseline": "tfrecord (PyPI)"}  # fmt: skip
            if pypi_tfrecord is None:
                row.update(baseline_samples_s=None, ratio=None, note="not installed")
            else:
                description = {"image": "byte", "label": "int", "vec": "float"} if "example" in case else None

                def pypi(path: str = path, description: Any = description) -> int:
                    if description is None:
                        return sum(1 for _ in pypi_tfrecord.tfrecord_iterator(path))
                    return sum(1 for _ in pypi_tfrecord.tfrecord_loader(path, None, description))

                t, n = _time(pypi)
                row.update(baseline_samples_s=n / t, ratio=t / ours_t)
            results.append(row)
    return results


def _print(rows: list[dict[str, Any]]) -> None:
    header = f"{'case':32} {'ours rec/s':>12} {'ours MB/s':>10}  {'baseline':26} {'base rec/s':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = f"{r['baseline_samples_s']:12.0f}" if r["baseline_samples_s"] is not None else f"{'-':>12}"
        ratio = f"{r['ratio']:6.2f}x" if r["ratio"] is not None else f"{r.get('note', '-'):>7}"
        print(f"{r['case']:32} {r['ours_samples_s']:12.0f} {r['ours_MBps']:10.1f}  {r['baseline']:26} {base} {ratio}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _print(run(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _print(run(tmp))
