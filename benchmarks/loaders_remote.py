"""The PyTorch path over object stores: gs:// against the server's ceiling, s3:// against the peers.

Both servers are started here on free loopback ports and stopped at the end (see
../shared/PERFORMANCE.md for why each is used as it is):

* gs:// on fake-gcs-server, the throughput backend: 2000 objects of 256 KiB. Rows: the server's
  ceiling measured in the same run (urllib3, 8 threads, as ``storage_get.py``), our torch batch
  mode (``DataLoader(S3IterableDataset(uri, "raw", batch_size=32), batch_size=None)``) with 0
  DataLoader workers and with ``engine_workers=2``, and sample mode
  (``DataLoader(S3IterableDataset(uri, "raw"), batch_size=32)``) with 0 and 2 DataLoader
  workers. Goal: >= 0.85 of the ceiling.
* s3:// on moto, which serves every client at ~200 objects/s: 400 objects of 256 KiB, all paths
  in this process (``num_workers=0``) so that the process's CPU time is the client's. Rows: ours
  (batch and sample mode), AWS s3torchconnector's ``S3IterableDataset.from_prefix`` through a
  ``DataLoader``, and s3dlio 0.10's ``create_async_loader`` items; objects/s and client CPU
  milliseconds per object, with ratios to ours.

Every path touches each object (its length) and runs a warm-up epoch first; the figure is the
median of ``--repeat`` epochs, the paths interleaved.

Run: ``bash scripts/bench.sh benchmarks/loaders_remote.py`` (installs the peers) or
``.venv/bin/python benchmarks/loaders_remote.py [--objects 2000] [--s3-objects 400] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported (see docs/INFRA)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # storage_get.py

from storage_get import gcs_ceiling, payload

from s3dlio_loader import Store

KiB = 1 << 10
OBJECT_SIZE = 256 * KiB
BATCH = 32


def _count(items: Iterable[Any]) -> int:
    """Objects seen, touching each one's length (a batch: a list of bytes or tensors)."""
    n = 0
    for item in items:
        if isinstance(item, list):
            n += sum(1 for x in item if len(x) == OBJECT_SIZE)
        else:
            n += int(len(item) == OBJECT_SIZE)
    return n


def measure(paths: dict[str, Callable[[], int]], repeat: int, count: int) -> dict[str, tuple[float, float]]:
    """(median objects/s, median CPU ms per object) of each path, after a warm-up; interleaved."""
    for name, run in paths.items():
        got = run()
        if got != count:
            raise RuntimeError(f"{name} saw {got} of {count} objects")
    walls: dict[str, list[float]] = {k: [] for k in paths}
    cpus: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeat):
        for name, run in paths.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    return {k: (count / statistics.median(walls[k]), statistics.median(cpus[k]) / count * 1e3) for k in paths}


def upload(store: Store, prefix: str, count: int, seed: int) -> None:
    blob = payload(OBJECT_SIZE + count, seed)
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(f"{prefix}o-{i:05d}", blob[i : i + OBJECT_SIZE]), range(count)))


def torch_paths(uri: str, storage_options: dict[str, Any], workers: tuple[int, ...], engine: bool) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from s3dlio_loader.adapters.torch import S3IterableDataset

    loaders: dict[str, Any] = {}
    for k in workers:
        loaders[f"ours, batch mode, DataLoader(num_workers={k})"] = DataLoader(
            S3IterableDataset(uri, "raw", batch_size=BATCH, storage_options=storage_options),
            batch_size=None, num_workers=k, persistent_workers=k > 0)  # fmt: skip
        loaders[f"ours, sample mode, DataLoader(batch_size={BATCH}, num_workers={k})"] = DataLoader(
            S3IterableDataset(uri, "raw", storage_options=storage_options),
            batch_size=BATCH, num_workers=k, persistent_workers=k > 0)  # fmt: skip
    if engine:
        loaders["ours, batch mode, engine_workers=2, DataLoader(num_workers=0)"] = DataLoader(
            S3IterableDataset(uri, "raw", batch_size=BATCH, engine_workers=2, storage_options=storage_options),
            batch_size=None, num_workers=0)  # fmt: skip
    return loaders


def bench_gcs(count: int, repeat: int) -> list[tuple[str, float, float, str]]:
    from servers import FakeGcsServer

    server = FakeGcsServer().start()
    loaders: dict[str, Any] = {}
    try:
        bucket = "bench"
        server.make_bucket(bucket)
        so = server.storage_options()
        upload(Store("gs", so), f"gs://{bucket}/", count, seed=5)
        names = [f"o-{i:05d}" for i in range(count)]
        ceiling = gcs_ceiling(server.endpoint, bucket, names)
        loaders = torch_paths(f"gs://{bucket}/", so, (0, 2), engine=True)
        paths: dict[str, Callable[[], int]] = {"server ceiling (urllib3, 8 threads)": lambda: ceiling() // OBJECT_SIZE}
        for name, loader in loaders.items():
            paths[name] = lambda loader=loader: _count(loader)
        results = measure(paths, repeat, count)
    finally:
        for loader in loaders.values():
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "close"):
                dataset.close()
        loaders.clear()
        server.stop()
    top = results["server ceiling (urllib3, 8 threads)"][0]
    return [(name, rate, cpu, f"{rate / top:.2f} of ceiling") for name, (rate, cpu) in results.items()]


def bench_s3(count: int, repeat: int) -> list[tuple[str, float, float, str]]:
    from servers import MotoServer
    from torch.utils.data import DataLoader

    server = MotoServer().start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_REGION", "AWS_DEFAULT_REGION")}  # fmt: skip
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                          AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
        bucket = "bench"
        server.make_bucket(bucket)
        so = server.storage_options()
        uri = f"s3://{bucket}/"
        upload(Store("s3", so), uri, count, seed=6)
        paths: dict[str, Callable[[], int]] = {}
        for name, loader in torch_paths(uri, so, (0,), engine=False).items():
            paths[name] = lambda loader=loader: _count(loader)
        notes: dict[str, str] = {}
        try:
            from s3torchconnector import S3IterableDataset as AwsIterable

            aws = DataLoader(AwsIterable.from_prefix(uri, region="us-east-1", endpoint=server.endpoint,
                                                     transform=lambda reader: reader.read()),
                             batch_size=BATCH, num_workers=0, collate_fn=list)  # fmt: skip
            paths["s3torchconnector S3IterableDataset, DataLoader(num_workers=0)"] = lambda: _count(aws)
        except ImportError:
            notes["s3torchconnector"] = "not installed"
        try:
            import s3dlio

            os.environ["AWS_ENDPOINT_URL"] = server.endpoint
            paths["s3dlio create_async_loader(...) items"] = lambda: _count(
                [memoryview(b) for b in s3dlio.create_async_loader(uri, {"batch_size": BATCH, "prefetch": 8})]
            )
        except ImportError:
            notes["s3dlio"] = "not installed"
        results = measure(paths, repeat, count)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
    ours_rate, ours_cpu = next(iter(results.values()))
    rows = [(name, rate, cpu, f"{rate / ours_rate:.2f}x / {cpu / ours_cpu:.2f}x") for name, (rate, cpu)
            in results.items()]  # fmt: skip
    rows += [(name, 0.0, 0.0, note) for name, note in notes.items()]
    return rows


def print_table(title: str, rows: list[tuple[str, float, float, str]], ratio_header: str) -> None:
    print(f"\n{title}")
    print(f"{'path':<66} {'obj/s':>8} {'CPU ms/obj':>11}  {ratio_header}")
    for name, rate, cpu, ratio in rows:
        print(f"{name:<66} {rate:>8,.0f} {cpu:>11.3f}  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=2000, help="gs:// objects of 256 KiB (default 2000)")
    parser.add_argument("--s3-objects", type=int, default=400, help="s3:// objects of 256 KiB (default 400)")
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per path (default 3)")
    parser.add_argument("--only", choices=["gs", "s3"], action="append", help="run only this backend")
    args = parser.parse_args()
    backends = args.only or ["gs", "s3"]
    print(f"{os.cpu_count()} cores; median of {args.repeat} epochs after a warm-up; CPU: this process only")
    if "gs" in backends:
        rows = bench_gcs(args.objects, args.repeat)
        print_table(f"gs:// on fake-gcs-server, {args.objects} x 256 KiB (goal: >= 0.85 of the ceiling)", rows,
                    "vs ceiling")  # fmt: skip
    if "s3" in backends:
        rows = bench_s3(args.s3_objects, args.repeat)
        print_table(f"s3:// on moto, {args.s3_objects} x 256 KiB, in-process paths", rows,
                    "throughput / CPU per object, vs ours (first row)")  # fmt: skip


if __name__ == "__main__":
    main()
