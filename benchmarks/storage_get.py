"""Storage GET throughput: our Store against plain Python, fsspec, and s3dlio, in one run.

Backends and what is compared on each (see ../shared/PERFORMANCE.md for why):

* file://  — ``Store.get_many`` over 2000 x 256 KiB and 8 x 64 MiB files vs a plain
  ``open().read()`` loop and vs s3dlio 0.10 (``get_many`` and ``create_async_loader().items()``).
* gs:// on fake-gcs-server (the throughput backend) — ``get_many`` vs the server's ceiling
  measured in the same run with urllib3 on 8 threads, and vs plain gcsfs ``fs.cat(list)``.
* s3:// on moto (server-bound at ~200 obj/s) — client CPU seconds per object of
  ``get_many`` vs s3fs ``fs.cat(list)`` and s3dlio ``get_many``.
* 20 ms of latency injected by a proxy in front of fake-gcs-server — ``get_many`` vs
  ``min(ceiling, in-flight / latency)``.

Run: ``bash scripts/bench.sh benchmarks/storage_get.py`` (installs the peers), or
``.venv/bin/python benchmarks/storage_get.py [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # servers.py, faultproxy.py

import numpy as np

from s3dlio_loader import Store

KiB, MiB = 1 << 10, 1 << 20
PROXY_SCRIPT = """
import sys, time
from faultproxy import FaultProxy
proxy = FaultProxy("127.0.0.1", int(sys.argv[1]), latency_s=float(sys.argv[2])).start()
print(proxy.endpoint, flush=True)
time.sleep(3600)
"""
ROWS: list[dict[str, Any]] = []


def payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def timed(fn: Callable[[], int], reps: int) -> tuple[float, float, int]:
    """(median wall seconds, median CPU seconds of this process, bytes) over ``reps`` runs."""
    walls, cpus, nbytes = [], [], 0
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        nbytes = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), nbytes


def record(backend: str, case: str, who: str, count: int, wall: float, cpu: float, nbytes: int,
           baseline: str | None = None) -> None:  # fmt: skip
    ROWS.append({"backend": backend, "case": case, "who": who, "obj_s": count / wall, "GB_s": nbytes / wall / 1e9,
                 "cpu_ms_per_obj": cpu / count * 1e3, "baseline": baseline})  # fmt: skip


def interleave(cases: dict[str, Callable[[], int]], reps: int) -> dict[str, tuple[float, float, int]]:
    """Run every case ``reps`` times, interleaved, so drift affects all alike."""
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            results[name].append(timed(fn, 1))
    return {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), v[-1][2])
            for k, v in results.items()}  # fmt: skip


# ------------------------------------------------------------------------------ file://


def bench_file(workdir: Path, reps: int, small_count: int) -> None:
    for case, count, size in (("256KiB", small_count, 256 * KiB), ("64MiB", 8, 64 * MiB)):
        d = workdir / f"file-{case}"
        d.mkdir()
        blob = payload(size + count, 1)
        for i in range(count):
            (d / f"obj-{i:05d}.bin").write_bytes(blob[i : i + size])
        for name, (wall, cpu, nbytes) in interleave(file_cases(d), reps).items():
            record("file", f"{count} x {case}", name, count, wall, cpu, nbytes, baseline="plain open().read()")


def file_cases(d: Path) -> dict[str, Callable[[], int]]:
    paths = sorted(str(p) for p in d.iterdir())
    store = Store.from_uri(str(d))
    objects = store.list(f"file://{d}/")
    uris = [o.uri for o in objects]

    def plain() -> int:
        n = 0
        for p in paths:
            with open(p, "rb") as f:
                n += len(f.read())
        return n

    cases: dict[str, Callable[[], int]] = {
        "plain open().read()": plain,
        "ours get_many": lambda: sum(len(b) for _, b in store.get_many(objects)),
    }
    try:
        import s3dlio
    except ImportError:
        print("s3dlio: not installed (bash scripts/bench.sh installs the peers)")
        return cases
    cases["s3dlio get_many"] = lambda: sum(len(b) for _, b in s3dlio.get_many(uris))
    cases["s3dlio async_loader.items()"] = lambda: sum(
        len(memoryview(b)) for b in s3dlio.create_async_loader(f"file://{d}/", {}).items()
    )
    return cases


# ------------------------------------------------------------------------------ gs://


def gcs_ceiling(endpoint: str, bucket: str, names: list[str], threads: int = 8) -> Callable[[], int]:
    import urllib3

    pool = urllib3.PoolManager(maxsize=threads)

    def one(name: str) -> int:
        r = pool.request("GET", f"{endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media",
                         preload_content=True)  # fmt: skip
        if r.status != 200:
            raise RuntimeError(f"GET {name}: HTTP {r.status}")
        return len(r.data)

    def run() -> int:
        with cf.ThreadPoolExecutor(threads) as ex:
            return sum(ex.map(one, names))

    return run


def bench_gcs(reps: int, count: int, latency_s: float) -> None:
    import gcsfs.core
    from servers import FakeGcsServer

    server = FakeGcsServer().start()
    try:
        bucket = "bench"
        server.make_bucket(bucket)
        so = server.storage_options()
        store = Store("gs", so)
        blob = payload(256 * KiB + count, 2)
        list(cf.ThreadPoolExecutor(16).map(lambda i: store.put(f"gs://{bucket}/o-{i:05d}", blob[i : i + 256 * KiB]),
                                           range(count)))  # fmt: skip
        objects = store.list(f"gs://{bucket}/")
        names = [o.uri.split("/", 3)[3] for o in objects]
        fs = gcsfs.core.GCSFileSystem(skip_instance_cache=True, **so)
        paths = [f"{bucket}/{n}" for n in names]
        ceiling = gcs_ceiling(server.endpoint, bucket, names)
        cases = {
            "server ceiling (urllib3, 8 threads)": ceiling,
            "ours get_many": lambda: sum(len(b) for _, b in store.get_many(objects)),
            "gcsfs fs.cat(list)": lambda: sum(len(b) for b in fs.cat(paths).values()),
        }
        results = interleave(cases, reps)
        for name, (wall, cpu, nbytes) in results.items():
            record("gs", f"{count} x 256KiB", name, count, wall, cpu, nbytes,
                   baseline="server ceiling (urllib3, 8 threads)")  # fmt: skip
        ceiling_rate = count / results["server ceiling (urllib3, 8 threads)"][0]

        # The proxy runs in its own process so that its threads do not share this one's GIL.
        proxy = subprocess.Popen(
            [sys.executable, "-c", PROXY_SCRIPT, str(server.port), str(latency_s)],
            stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent / "tests"),
        )  # fmt: skip
        try:
            assert proxy.stdout is not None
            endpoint = proxy.stdout.readline().strip()
            slow = Store("gs", server.storage_options(endpoint=endpoint))
            in_flight = slow.options.max_in_flight
            wall, cpu, nbytes = timed(lambda: sum(len(b) for _, b in slow.get_many(objects)), reps)
            bound = min(ceiling_rate, in_flight / latency_s)
            ROWS.append({"backend": "gs+latency", "case": f"{count} x 256KiB, {latency_s * 1e3:.0f} ms",
                         "who": "ours get_many", "obj_s": count / wall, "GB_s": nbytes / wall / 1e9,
                         "cpu_ms_per_obj": cpu / count * 1e3, "baseline": None,
                         "bound_obj_s": bound})  # fmt: skip
        finally:
            proxy.terminate()
            proxy.wait()
    finally:
        server.stop()


# ------------------------------------------------------------------------------ s3:// (moto)


def bench_s3(reps: int, count: int) -> None:
    import s3fs
    from servers import MotoServer

    server = MotoServer().start()
    try:
        bucket = "bench"
        server.make_bucket(bucket)
        so = server.storage_options()
        store = Store("s3", so)
        blob = payload(256 * KiB + count, 3)
        list(cf.ThreadPoolExecutor(8).map(lambda i: store.put(f"s3://{bucket}/o-{i:05d}", blob[i : i + 256 * KiB]),
                                          range(count)))  # fmt: skip
        objects = store.list(f"s3://{bucket}/")
        uris = [o.uri for o in objects]
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
        cases: dict[str, Callable[[], int]] = {
            "s3fs fs.cat(list)": lambda: sum(len(b) for b in fs.cat([u[5:] for u in uris]).values()),
            "ours get_many": lambda: sum(len(b) for _, b in store.get_many(objects)),
        }
        try:
            import s3dlio

            os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="testing",
                              AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")  # fmt: skip
            cases["s3dlio get_many"] = lambda: sum(len(b) for _, b in s3dlio.get_many(uris))
        except ImportError:
            pass
        for name, (wall, cpu, nbytes) in interleave(cases, reps).items():
            record("s3 (moto)", f"{count} x 256KiB", name, count, wall, cpu, nbytes, baseline="s3fs fs.cat(list)")
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        server.stop()


# ------------------------------------------------------------------------------ report


def report() -> None:
    print(f"{'backend':<12} {'case':<24} {'who':<38} {'obj/s':>9} {'GB/s':>7} {'CPU ms/obj':>10} {'ratio':>7}")
    base: dict[tuple[str, str], dict[str, Any]] = {}
    for row in ROWS:
        if row["baseline"] == row["who"]:
            base[(row["backend"], row["case"])] = row
    for row in ROWS:
        ref = base.get((row["backend"], row["case"]))
        if row.get("bound_obj_s"):
            ratio = f"{row['obj_s'] / row['bound_obj_s']:.2f}b"
        elif ref is not None and row["backend"].startswith("s3"):
            ratio = f"{ref['cpu_ms_per_obj'] / row['cpu_ms_per_obj']:.2f}c"
        elif ref is not None:
            ratio = f"{row['obj_s'] / ref['obj_s']:.2f}"
        else:
            ratio = ""
        print(f"{row['backend']:<12} {row['case']:<24} {row['who']:<38} {row['obj_s']:>9.0f} {row['GB_s']:>7.2f} "
              f"{row['cpu_ms_per_obj']:>10.3f} {ratio:>7}")  # fmt: skip
    print("ratio: throughput vs the row's baseline; 'c' = baseline CPU per object / this row's (higher is "
          "better); 'b' = fraction of min(server ceiling, in-flight / latency)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer objects and repetitions")
    parser.add_argument("--only", choices=["file", "gs", "s3"], action="append")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    only = set(args.only or ["file", "gs", "s3"])
    workdir = Path(tempfile.mkdtemp(prefix="s3dlio-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    try:
        if "file" in only:
            bench_file(workdir, reps, 500 if args.quick else 2000)
        if "gs" in only:
            bench_gcs(reps, 300 if args.quick else 1000, latency_s=0.02)
        if "s3" in only:
            bench_s3(max(2, reps // 2), 100 if args.quick else 400)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report()


if __name__ == "__main__":
    main()
