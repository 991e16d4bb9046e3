"""Engine benchmark: dataset start-up, cache sharing across workers, loader throughput, 10^7-entry manifests.

Sections (each compared with its peer in the same run; see ../shared/PERFORMANCE.md):

* ``construction``: ``Dataset(prefix)`` over 64 Parquet files on a local S3 server (moto), in
  new processes (library imports excluded, the S3 client's set-up included): epoch 1 (empty
  cache: one LIST, one footer read per file), epoch 2 (same process), a fresh process with the
  persisted cache (listing younger than the TTL: no request), a fresh process whose listing
  expired (one LIST). Peer: s3dlio 0.10 ``create_async_loader(prefix, {"format": "parquet"})``,
  first in a process and later ones. Goals: epoch 2 <= 1/10 of s3dlio's later loader, fresh
  process <= 1/10 of s3dlio's first.
* ``pss``: 8 separate processes (as spawned workers or ranks) unpickle a dataset and touch all
  of its cache arrays; their proportional set size (PSS, from /proc/PID/smaps: the cache file
  mappings' Pss plus each process's private memory growth) against one process alone. Goal:
  <= 1.25x. Contrast: the same with ``S3DLIO_CACHE_PERSIST=0`` (arrays pickled by value).
* ``throughput``: samples/s of ``Loader(num_workers=2)`` over local .npz files against
  ``torch.utils.data.DataLoader(num_workers=2)`` with a map-style dataset calling ``np.load``,
  same batch size, both collating dicts of arrays.
* ``manifest``: a synthetic 10^7-object manifest written as JSON Lines (~1 GB) and Parquet;
  ``Dataset(Manifest.read(uri))`` in a new process with an empty cache and again with the
  persisted cache: time and memory (peak RSS growth).

Run: ``.venv/bin/python benchmarks/engine.py [--quick] [--only SECTION ...]``
(``bash scripts/bench.sh benchmarks/engine.py`` installs the peers first).
Data goes under ``$BENCH_DIR`` (default /var/tmp) and is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # servers.py (imported where needed)

ROWS: list[dict[str, Any]] = []


def record(section: str, what: str, ours: float, unit: str, peer_name: str = "", peer: float | None = None,
           goal: str = "", lower_is_better: bool = True, note: str = "") -> None:  # fmt: skip
    ROWS.append({"section": section, "what": what, "ours": ours, "unit": unit, "peer_name": peer_name,
                 "peer": peer, "goal": goal, "lower": lower_is_better, "note": note})  # fmt: skip


def child(mode: str, args: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 1800) -> Any:
    """Run ``mode`` of this script in a new Python process; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(args)], cwd=str(ROOT),
                         env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ============================================================================ construction


PARQUET_FILES = 64


def bench_construction(workdir: Path, reps: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from servers import AWS_CLIENT_ENV, MotoServer

    from s3dlio_loader import Store

    os.environ.update(AWS_CLIENT_ENV)
    server = MotoServer().start()
    try:
        server.make_bucket("bench")
        so = server.storage_options()
        store = Store("s3", so)
        rng = np.random.default_rng(0)
        for k in range(PARQUET_FILES):
            t = pa.table({"id": np.arange(4096, dtype=np.int64) + 4096 * k, "x": rng.random(4096),
                          "s": [f"row-{i}" for i in range(4096)]})  # fmt: skip
            buf = io.BytesIO()
            pq.write_table(t, buf, row_group_size=1024)
            store.put(f"s3://bench/train/part-{k:03d}.parquet", buf.getvalue())
        prefix = "s3://bench/train/"
        s3dlio_env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                      "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}  # fmt: skip
        have_s3dlio = True
        try:
            import s3dlio  # noqa: F401
        except ImportError:
            have_s3dlio = False
            print("s3dlio: not installed (bash scripts/bench.sh installs the peers)")
        firsts, laters, freshes, expireds, s_firsts, s_laters = [], [], [], [], [], []
        cpus, s_cpus = [], []
        ops: dict[str, Any] = {}
        for r in range(reps):  # interleaved: ours, then s3dlio, each in new processes
            cache_dir = workdir / f"cache-construction-{r}"
            env = {"S3DLIO_CACHE_DIR": str(cache_dir)}
            cold = child("construct", {"prefix": prefix, "so": so, "later": 20}, env)
            fresh = child("construct", {"prefix": prefix, "so": so, "later": 0}, env)
            expired = child("construct", {"prefix": prefix, "so": so, "later": 0}, {**env, "S3DLIO_LISTING_TTL": "0"})
            firsts.append(cold["first_s"])
            cpus.append(cold["first_cpu_s"])
            laters.append(cold["later_s"])
            freshes.append(fresh["first_s"])
            expireds.append(expired["first_s"])
            ops = {"epoch 1": cold["first_ops"], "epoch 2": cold["later_ops"], "fresh": fresh["first_ops"],
                   "fresh, TTL expired": expired["first_ops"], "samples": cold["samples"]}  # fmt: skip
            if have_s3dlio:
                s = child("s3dlio", {"prefix": prefix, "later": 10}, s3dlio_env)
                s_firsts.append(s["first_s"])
                s_cpus.append(s["first_cpu_s"])
                s_laters.append(s["later_s"])
        med = statistics.median
        print(f"construction: {PARQUET_FILES} Parquet files, {ops['samples']} row groups; requests per case: "
              f"{ {k: v for k, v in ops.items() if k != 'samples'} }")  # fmt: skip
        peer_first = med(s_firsts) if s_firsts else None
        peer_later = med(s_laters) if s_laters else None
        cpu_note = f"client CPU {med(cpus) * 1e3:.0f} ms"
        if s_cpus:
            cpu_note += f" vs s3dlio's {med(s_cpus) * 1e3:.0f} ms"
        record("construction", "epoch 1 (empty cache)", med(firsts) * 1e3, "ms", "s3dlio first loader", _ms(peer_first),
               note=cpu_note + " (moto shares the 2 cores)")  # fmt: skip
        record("construction", "epoch 2 (same process)", med(laters) * 1e3, "ms", "s3dlio later loader",
               _ms(peer_later), goal="<= 0.10x")  # fmt: skip
        record("construction", "fresh process, persisted cache", med(freshes) * 1e3, "ms", "s3dlio first loader",
               _ms(peer_first), goal="<= 0.10x")  # fmt: skip
        record("construction", "fresh process, listing expired (1 LIST)", med(expireds) * 1e3, "ms",
               "s3dlio first loader", _ms(peer_first))  # fmt: skip
    finally:
        server.stop()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def child_construct(args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet  # noqa: F401  (library imports are not part of the figure)
    import s3fs  # noqa: F401

    from s3dlio_loader import Dataset, Store

    c0, t0 = time.process_time(), time.perf_counter()
    store = Store("s3", args["so"])
    ds = Dataset(args["prefix"], store=store)
    first = time.perf_counter() - t0
    first_cpu = time.process_time() - c0
    first_ops = store.stats.snapshot()["by_op"]
    store.stats.reset()
    times = []
    for _ in range(args["later"]):
        t0 = time.perf_counter()
        Dataset(args["prefix"], store=store)
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "first_cpu_s": first_cpu, "first_ops": first_ops,
            "later_s": statistics.median(times) if times else None, "later_ops": store.stats.snapshot()["by_op"],
            "samples": len(ds)}  # fmt: skip


def child_s3dlio(args: dict[str, Any]) -> dict[str, Any]:
    import s3dlio

    c0, t0 = time.process_time(), time.perf_counter()
    s3dlio.create_async_loader(args["prefix"], {"format": "parquet"})
    first = time.perf_counter() - t0
    first_cpu = time.process_time() - c0
    times = []
    for _ in range(args["later"]):
        t0 = time.perf_counter()
        s3dlio.create_async_loader(args["prefix"], {"format": "parquet"})
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "first_cpu_s": first_cpu, "later_s": statistics.median(times),
            "indexed": s3dlio.parquet_cache_len()}


# ============================================================================ pss


def bench_pss(workdir: Path, quick: bool) -> None:
    from s3dlio_loader import Dataset, Manifest, cache
    from s3dlio_loader.formats import write
    from s3dlio_loader.storage import Store

    tf_dir = workdir / "tfrecords"
    tf_dir.mkdir()
    files, records = (500, 500) if quick else (2000, 500)
    store = Store("file")
    rec = [bytes(24)] * records
    for k in range(files):
        write(f"file://{tf_dir}/r-{k:05d}.tfrecord", rec, store=store)
    n_manifest = 200_000 if quick else 1_000_000
    uris = [f"s3://bucket/train/shard-{i:07d}.npz" for i in range(n_manifest)]
    etags = np.char.mod("%032x", np.arange(n_manifest) * 7919)
    cases: dict[str, Callable[[], Any]] = {
        f"{files} TFRecord files x {records} records (packed record index)":
            lambda: Dataset(f"file://{tf_dir}/", format="tfrecord"),
        f"{n_manifest} objects from a manifest (object table, counts, starts)":
            lambda: Dataset(Manifest.from_columns(uris, np.full(n_manifest, 1 << 20), etags,
                                                  samples=np.full(n_manifest, 64)), format="npz"),
    }  # fmt: skip
    for persist in (True, False):
        for name, make in cases.items():
            cache_dir = workdir / f"cache-pss-{int(persist)}"
            previous = cache._cache
            cache.configure(cache_dir=str(cache_dir), cache_persist=persist)
            ds = make()
            nbytes, fmt = ds.catalog.nbytes, ds.format
            path = workdir / "dataset.pickle"
            path.write_bytes(pickle.dumps(ds))
            del ds
            cache._cache = previous
            gc.collect()  # this process no longer maps the catalog: only the children count
            one = _pss_children(path, 1, cache_dir, fmt)
            eight = _pss_children(path, 8, cache_dir, fmt)
            label = "mapped cache file" if persist else "S3DLIO_CACHE_PERSIST=0 (pickled copies)"
            record("pss", f"8 processes vs 1: {name}, {label}", eight / one, "x", note=(
                f"one copy {nbytes / 2**20:.1f} MiB of arrays; 1 process {one / 2**20:.1f} MiB, "
                f"8 processes {eight / 2**20:.1f} MiB"), goal="<= 1.25x" if persist else "")  # fmt: skip


def _pss_children(pickled: Path, count: int, cache_dir: Path, fmt: str) -> float:
    """Summed cache cost (bytes) of ``count`` processes holding the pickled dataset at the same time."""
    spec = json.dumps({"pickle": str(pickled), "cache_dir": str(cache_dir), "format": fmt})
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "pss", spec], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=str(ROOT)) for _ in range(count)]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a PSS child failed")
        for p in procs:  # everyone maps everything now: measure
            assert p.stdin is not None
            p.stdin.write("measure\n")
            p.stdin.flush()
        costs = []
        for p in procs:
            assert p.stdout is not None
            costs.append(json.loads(p.stdout.readline())["cost"])
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("exit\n")
            p.stdin.flush()
        return float(sum(costs))
    finally:
        for p in procs:
            p.wait(60)


def _smaps(cache_dir: str) -> tuple[int, int]:
    """(Pss of this process's mappings of files under ``cache_dir``, private bytes of everything else)."""
    cache_pss = other_private = 0
    in_cache = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's header line: "start-end perms offset dev inode path"
                parts = line.split(None, 5)
                in_cache = len(parts) == 6 and parts[5].strip().startswith(cache_dir)
                continue
            if head == "Pss:" and in_cache:
                cache_pss += int(line.split()[1]) * 1024
            elif head in ("Private_Clean:", "Private_Dirty:") and not in_cache:
                other_private += int(line.split()[1]) * 1024
    return cache_pss, other_private


def child_pss(args: dict[str, Any]) -> None:
    from s3dlio_loader.engine.dataset import Dataset
    from s3dlio_loader.formats import reader_class

    reader_class(args["format"])  # the format's module: code every worker imports anyway, not cache

    cache_dir = os.path.realpath(args["cache_dir"])
    _, private_before = _smaps(cache_dir)
    with open(args["pickle"], "rb") as f:
        ds: Dataset = pickle.load(f)
    cat = ds.catalog
    arrays = [cat.counts, cat.starts, *cat.table.arrays().values()]
    if cat.pack is not None:
        arrays += [cat.pack.present, *(a for c in cat.pack.columns.values() for a in c.arrays.values())]
    touched = 0
    for a in arrays:  # touch every page of every array
        flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        touched += int(flat[::4096].sum()) if flat.size else 0
    for i in range(0, len(cat), max(1, len(cat) // 500)):
        cat.index(i)
    print("ready", flush=True)
    sys.stdin.readline()
    cache_pss, private_after = _smaps(cache_dir)
    print(json.dumps({"cost": cache_pss + private_after - private_before, "touched": touched}), flush=True)
    sys.stdin.readline()


# ============================================================================ throughput


def bench_throughput(workdir: Path, reps: int, quick: bool) -> None:
    import torch
    import torch.utils.data

    from s3dlio_loader import Loader, cache

    files = 512 if quick else 2048
    batch = 32
    d = workdir / "npz"
    d.mkdir()
    rng = np.random.default_rng(1)
    paths = []
    for k in range(files):
        p = d / f"s-{k:05d}.npz"
        np.savez(p, x=rng.random((64, 64, 3), dtype=np.float32), y=np.int64(k))
        paths.append(str(p))

    class NpzFiles(torch.utils.data.Dataset):  # the peer: a map-style dataset calling np.load
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> dict[str, np.ndarray]:
            with np.load(paths[i]) as z:
                return {k: z[k] for k in z.files}

    previous = cache._cache
    cache.configure(cache_dir=str(workdir / "cache-throughput"))
    t0 = time.perf_counter()
    loader = Loader(f"file://{d}/", format="npz", batch_size=batch, num_workers=2)
    built = time.perf_counter() - t0
    torch_loader = torch.utils.data.DataLoader(NpzFiles(), batch_size=batch, num_workers=2)

    def ours() -> int:
        n = 0
        for b in loader:
            n += len(b["y"])
        return n

    def peer() -> int:
        n = 0
        for b in torch_loader:
            n += len(b["y"])
        return n

    ours()  # warm the page cache and both code paths
    peer()
    rates: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(reps):
        for name, fn in (("ours", ours), ("peer", peer)):
            t0 = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t0))
    loader.close()
    cache._cache = previous
    record("throughput", f"Loader(num_workers=2), {files} npz files of 48 KiB, batch {batch}",
           statistics.median(rates["ours"]), "samples/s", "torch DataLoader(num_workers=2) + np.load",
           statistics.median(rates["peer"]), lower_is_better=False,
           note=f"dataset construction (indexing {files} files) {built:.2f} s")  # fmt: skip


# ============================================================================ manifest


def bench_manifest(workdir: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from s3dlio_loader import Manifest
    from s3dlio_loader.cache import ObjectTable
    from s3dlio_loader.cache.manifest import table_from_arrow

    t0 = time.perf_counter()
    large = pa.large_string()
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), 8, "0").cast(large)
    uris = pc.binary_join_element_wise(pa.scalar("s3://bench-bucket/train/part-", large), numbers,
                                       pa.scalar(".npz", large), pa.scalar("", large))  # fmt: skip
    rng = np.random.default_rng(2)
    sizes = rng.integers(1 << 20, 1 << 24, n, dtype=np.int64)
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    etag_bytes = np.empty((n, 32), dtype=np.uint8)
    etag_bytes[:, 0::2] = hexdigits[raw >> 4]
    etag_bytes[:, 1::2] = hexdigits[raw & 15]
    del raw
    base = table_from_arrow(uris, sizes, None, np.full(n, np.nan))
    table = ObjectTable(base.prefix, base.uri_data, base.uri_offsets, sizes, etag_bytes.view("S32").reshape(n),
                        base.mtimes)  # fmt: skip
    manifest = Manifest(table, samples=np.full(n, 256, dtype=np.int64))
    built = time.perf_counter() - t0
    del uris, numbers, base
    written = {}
    for ext in ("jsonl", "parquet"):
        t0 = time.perf_counter()
        manifest.write(f"file://{workdir}/manifest.{ext}")
        written[ext] = (time.perf_counter() - t0, os.path.getsize(workdir / f"manifest.{ext}"))
    del manifest, table
    gc.collect()
    print(f"manifest: {n} objects built in {built:.1f} s; written as JSON Lines in {written['jsonl'][0]:.1f} s "
          f"({written['jsonl'][1] / 1e9:.2f} GB), as Parquet in {written['parquet'][0]:.1f} s "
          f"({written['parquet'][1] / 1e6:.0f} MB)")  # fmt: skip
    for ext in ("jsonl", "parquet"):
        env = {"S3DLIO_CACHE_DIR": str(workdir / f"cache-manifest-{ext}")}
        uri = f"file://{workdir}/manifest.{ext}"
        cold = child("manifest", {"uri": uri}, env)
        warm = child("manifest", {"uri": uri}, env)
        assert cold["samples"] == warm["samples"] == n * 256
        record("manifest", f"{n:.0e}-object {ext} manifest, new process, empty cache", cold["total_s"], "s",
               note=f"read {cold['read_s']:.1f} s + dataset {cold['dataset_s']:.1f} s; peak RSS +"
                    f"{cold['peak_growth_mb']:.0f} MB")  # fmt: skip
        record("manifest", f"{n:.0e}-object {ext} manifest, new process, persisted cache", warm["total_s"] * 1e3, "ms",
               note=f"peak RSS +{warm['peak_growth_mb']:.0f} MB; again in that process "
                    f"{warm['again_s'] * 1e3:.2f} ms")  # fmt: skip


def child_manifest(args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.json
    import pyarrow.parquet

    from s3dlio_loader import Dataset, Manifest

    del pyarrow  # imported only so that library imports are not part of the figures

    def rss_mb(field: str) -> float:  # VmHWM: the peak of this process image (ru_maxrss survives exec)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0

    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    m = Manifest.read(args["uri"])
    t1 = time.perf_counter()
    ds = Dataset(m, format="npz")
    t2 = time.perf_counter()
    peak = rss_mb("VmHWM")
    t3 = time.perf_counter()
    Dataset(Manifest.read(args["uri"]), format="npz")
    again = time.perf_counter() - t3
    return {"read_s": t1 - t0, "dataset_s": t2 - t1, "total_s": t2 - t0, "again_s": again,
            "peak_growth_mb": peak - base, "samples": len(ds)}  # fmt: skip


# ============================================================================ report


def report() -> None:
    print()
    print(f"{'section':<13} {'case':<78} {'ours':>12} {'peer':>12} {'ratio':>8} {'goal':>9}  peer / note")
    for r in ROWS:
        ours = f"{r['ours']:.3g} {r['unit']}" if r["unit"] != "x" else f"{r['ours']:.2f}x"
        peer = f"{r['peer']:.3g} {r['unit']}" if r["peer"] is not None else ""
        if r["peer"] is not None and r["peer"] > 0:
            ratio = f"{r['ours'] / r['peer']:.3f}" if r["lower"] else f"{r['ours'] / r['peer']:.2f}"
        else:
            ratio = ""
        detail = "; ".join(x for x in (r["peer_name"], r["note"]) if x)
        print(f"{r['section']:<13} {r['what']:<78} {ours:>12} {peer:>12} {ratio:>8} {r['goal']:>9}  {detail}")
    print("ratio: ours / peer (time: lower is better; samples/s: higher is better); pss: 8 processes' cache "
          "memory / one process's")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, args = sys.argv[2], json.loads(sys.argv[3])
        if mode == "pss":
            child_pss(args)
            return
        fn = {"construct": child_construct, "s3dlio": child_s3dlio, "manifest": child_manifest}[mode]
        print(json.dumps(fn(args)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller data, 10^6-entry manifest")
    parser.add_argument("--only", choices=["construction", "pss", "throughput", "manifest"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["construction", "pss", "throughput", "manifest"])
    reps = 2 if args.quick else 3
    workdir = Path(tempfile.mkdtemp(prefix="s3dlio-bench-engine-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    os.environ["S3DLIO_CACHE_DIR"] = str(workdir / "cache-default")  # never the user's ~/.cache
    try:
        if "construction" in only:
            bench_construction(workdir, reps)
        if "pss" in only:
            bench_pss(workdir, args.quick)
        if "throughput" in only:
            bench_throughput(workdir, reps, args.quick)
        if "manifest" in only:
            bench_manifest(workdir, 10**6 if args.quick else 10**7)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report()


if __name__ == "__main__":
    main()
