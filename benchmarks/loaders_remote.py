"""The PyTorch path over object stores: gs:// against the server's ceiling, s3:// against the peers.

Both servers are started here on free loopback ports (``tests/servers.py``) and stopped at the
end (see ../shared/PERFORMANCE.md for why each is used as it is):

* gs:// on fake-gcs-server, the throughput backend: ``--objects`` (2000) objects of 256 KiB.
  Rows: the server's ceiling measured in the same run (urllib3, 8 threads, as
  ``storage_get.py``); our batch mode ``DataLoader(S3IterableDataset(uri, "raw", batch_size=32),
  batch_size=None, num_workers=K)`` and sample mode ``DataLoader(S3IterableDataset(uri, "raw"),
  batch_size=32, num_workers=K)`` for K = 0 and 2 (persistent workers); and batch mode with
  ``engine_workers=2`` (the engine's own worker processes, ``DataLoader(num_workers=0)``).
  Goal: >= 0.85 of the ceiling.
* s3:// on moto, which holds every client near its own rate: ``--s3-objects`` (400) objects of
  256 KiB, every path in this process (``num_workers=0``) so that the process's CPU time is the
  client's. Rows: ours (batch mode, the reference, and sample mode), AWS s3torchconnector's
  ``S3IterableDataset.from_prefix`` through ``DataLoader(num_workers=0)``, and s3dlio 0.10's
  ``create_async_loader`` (endpoint and credentials from ``AWS_*`` variables). Goal: throughput
  >= 1.0x the peers with the lowest CPU per object.

Columns: objects/s; MB/s (10^6 bytes); client CPU in ms per object: this process plus its
worker processes (DataLoader or engine workers, read from /proc), not the server; the server's
own CPU per object (the server shares the machine's cores with the client); and the ratio (gs:
fraction of the ceiling; s3: throughput and CPU per object against ours).

Our settings: ``--prefetch``, ``--io-threads`` and ``--read-size`` (sample mode) are passed to
``S3IterableDataset``; by default they are the package's defaults (prefetch 2, 16 I/O threads,
read size from the object size: 32 samples of 256 KiB): a sweep on gs:// on the 2-core machine
(prefetch 1-8, io_threads 4-16, sample-mode read_size 8 or 32, and ``S3Collate(bytes_as="tensor")``
with DataLoader workers) found nothing faster beyond the noise.
The settings used and the package's defaults are printed; when they differ, rows with the
defaults are added.

Every path touches each object (its length) and runs a warm-up epoch first (which also starts
persistent workers); the figure is the median of ``--repeat`` epochs, the paths interleaved
within each repetition. A peer that is not installed gets a "not installed" row.

Run: ``bash scripts/bench.sh benchmarks/loaders_remote.py`` (installs the peers) or
``.venv/bin/python benchmarks/loaders_remote.py [--objects 2000] [--s3-objects 400] [--repeat 3]
[--only gs|s3] [--prefetch N] [--io-threads N] [--read-size N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gc
import inspect
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
CEILING = "server ceiling (urllib3, 8 threads)"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: A path returns (objects, bytes) it saw, having touched each object's length.
Run = Callable[[], tuple[int, int]]


@dataclass
class Result:
    name: str
    rate: float = 0.0  # objects/s
    mbps: float = 0.0  # 10^6 bytes/s
    cpu_ms: float = 0.0  # client CPU (this process + its workers) per object
    server_ms: float = 0.0  # server CPU per object
    note: str = ""


# ============================================================================ measuring


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: user + system) of every process visible in /proc."""
    table: dict[int, tuple[int, float]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid ...
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


def _tree(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class CpuMeter:
    """CPU seconds of this process with its worker processes (client), and of the server's processes."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def sample(self) -> tuple[dict[int, float], dict[int, float], float]:
        """(worker pid -> CPU s, server pid -> CPU s, CPU s of reaped children); this process's
        own time is taken separately with time.process_time()."""
        table = _proc_cpu()
        server = _tree(self.server_pid, table) if self.server_pid and self.server_pid in table else set()
        workers = _tree(os.getpid(), table) - server - {os.getpid()}
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ({p: table[p][1] for p in workers}, {p: table[p][1] for p in server},
                reaped.ru_utime + reaped.ru_stime)  # fmt: skip

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def measure(paths: dict[str, Run], repeat: int, count: int, server_pid: int | None) -> dict[str, Result]:
    """Median objects/s, MB/s, client and server CPU per object of each path, after a warm-up
    epoch; the paths interleaved within each repetition."""
    for name, run in paths.items():
        got, _ = run()
        if got != count:
            raise RuntimeError(f"{name} saw {got} of {count} objects")
    gc.collect()  # the previous section's garbage, not in the first timed epoch
    meter = CpuMeter(server_pid)
    samples: dict[str, list[tuple[float, int, float, float]]] = {k: [] for k in paths}
    for _ in range(repeat):
        for name, run in paths.items():
            w0, s0, r0 = meter.sample()
            c0, t0 = time.process_time(), time.perf_counter()
            _, nbytes = run()
            wall = time.perf_counter() - t0
            own = time.process_time() - c0
            w1, s1, r1 = meter.sample()
            client = own + meter.delta(w0, w1) + (r1 - r0)
            samples[name].append((wall, nbytes, client, meter.delta(s0, s1)))
    results = {}
    for name, runs in samples.items():
        wall = statistics.median(r[0] for r in runs)
        results[name] = Result(
            name, rate=count / wall, mbps=statistics.median(r[1] / r[0] for r in runs) / 1e6,
            cpu_ms=statistics.median(r[2] for r in runs) / count * 1e3,
            server_ms=statistics.median(r[3] for r in runs) / count * 1e3,
        )  # fmt: skip
    return results


def _count(items: Iterable[Any]) -> tuple[int, int]:
    """(objects, bytes) seen, touching each object's length (a batch: a list of bytes or tensors)."""
    n = nbytes = 0
    for item in items:
        for x in item if isinstance(item, list) else (item,):
            size = len(x)
            if size != OBJECT_SIZE:
                raise RuntimeError(f"an object of {size} bytes, expected {OBJECT_SIZE}")
            n += 1
            nbytes += size
    return n, nbytes


def upload(store: Store, prefix: str, count: int, seed: int) -> None:
    blob = payload(OBJECT_SIZE + count, seed)
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(f"{prefix}o-{i:05d}", blob[i : i + OBJECT_SIZE]), range(count)))


# ============================================================================ our paths


@dataclass(frozen=True)
class Settings:
    """Our S3IterableDataset's tuning arguments (None: the package's default)."""

    prefetch: int | None = None
    io_threads: int | None = None
    read_size: int | None = None

    def kwargs(self, sample_mode: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.prefetch is not None:
            out["prefetch"] = self.prefetch
        if self.io_threads is not None:
            out["io_threads"] = self.io_threads
        if sample_mode and self.read_size is not None:
            out["read_size"] = self.read_size
        return out

    @property
    def is_default(self) -> bool:
        return self == Settings()


def package_defaults() -> dict[str, Any]:
    from s3dlio_loader.adapters.torch import S3IterableDataset

    params = inspect.signature(S3IterableDataset.__init__).parameters
    return {k: params[k].default for k in ("prefetch", "io_threads", "read_size")}


def describe(settings: Settings) -> str:
    """Our settings, and the package's defaults (read from the installed package)."""
    from s3dlio_loader.adapters import torch as adapter

    defaults = package_defaults()
    used = {k: getattr(settings, k) if getattr(settings, k) is not None else v for k, v in defaults.items()}
    auto = max(1, min(adapter.DEFAULT_READ_SIZE, adapter.READ_BYTES_TARGET // OBJECT_SIZE))

    def show(values: dict[str, Any]) -> str:
        return ", ".join(f"{k}={f'auto ({auto})' if k == 'read_size' and v is None else v}" for k, v in values.items())

    same = " (the package's defaults)" if settings.is_default else f"; package defaults: {show(defaults)}"
    return f"ours: {show(used)}{same}"


def torch_loaders(uri: str, storage_options: dict[str, Any], workers: tuple[int, ...], settings: Settings,
                  *, tag: str = "", engine: bool = False) -> dict[str, Any]:  # fmt: skip
    """Our DataLoaders by row name: batch and sample mode for each number of DataLoader workers."""
    from torch.utils.data import DataLoader

    from s3dlio_loader.adapters.torch import S3IterableDataset

    batch_kw, sample_kw = settings.kwargs(False), settings.kwargs(True)
    loaders: dict[str, Any] = {}
    for k in workers:
        loaders[f"ours{tag}, batch mode, DataLoader(num_workers={k})"] = DataLoader(
            S3IterableDataset(uri, "raw", batch_size=BATCH, storage_options=storage_options, **batch_kw),
            batch_size=None, num_workers=k, persistent_workers=k > 0)  # fmt: skip
        loaders[f"ours{tag}, sample mode, DataLoader(batch_size={BATCH}, num_workers={k})"] = DataLoader(
            S3IterableDataset(uri, "raw", storage_options=storage_options, **sample_kw),
            batch_size=BATCH, num_workers=k, persistent_workers=k > 0)  # fmt: skip
    if engine:
        loaders[f"ours{tag}, batch mode, engine_workers=2, DataLoader(num_workers=0)"] = DataLoader(
            S3IterableDataset(uri, "raw", batch_size=BATCH, engine_workers=2, storage_options=storage_options,
                              **batch_kw),
            batch_size=None, num_workers=0)  # fmt: skip
    return loaders


def close_loaders(loaders: dict[str, Any]) -> None:
    """Stop persistent DataLoader workers and engine workers now, not at garbage collection."""
    for loader in loaders.values():
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            with contextlib.suppress(Exception):
                iterator._shutdown_workers()
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "close"):
            with contextlib.suppress(Exception):
                dataset.close()
    loaders.clear()


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ============================================================================ gs://


def bench_gcs(count: int, repeat: int, settings: Settings) -> list[Result]:
    from servers import FakeGcsServer

    loaders: dict[str, Any] = {}
    with FakeGcsServer() as server:
        try:
            bucket = "bench"
            server.make_bucket(bucket)
            so = server.storage_options()
            uri = f"gs://{bucket}/"
            upload(Store("gs", so), uri, count, seed=5)
            ceiling = gcs_ceiling(server.endpoint, bucket, [f"o-{i:05d}" for i in range(count)])

            def run_ceiling() -> tuple[int, int]:
                nbytes = ceiling()
                return nbytes // OBJECT_SIZE, nbytes

            loaders = torch_loaders(uri, so, (0, 2), settings, engine=True)
            if not settings.is_default:
                loaders |= torch_loaders(uri, so, (0,), Settings(), tag=" (package defaults)")
            paths: dict[str, Run] = {CEILING: run_ceiling}
            for name, loader in loaders.items():
                paths[name] = lambda loader=loader: _count(loader)
            results = measure(paths, repeat, count, server.proc.pid if server.proc else None)
        finally:
            close_loaders(loaders)
    top = results[CEILING].rate
    for r in results.values():
        r.note = f"{r.rate / top:.2f}"
    return list(results.values())


# ============================================================================ s3:// (moto)


def bench_s3(count: int, repeat: int, settings: Settings) -> list[Result]:
    from servers import MotoServer
    from torch.utils.data import DataLoader

    loaders: dict[str, Any] = {}
    with MotoServer() as server, environment(**MotoServer.client_env(), AWS_REGION="us-east-1"):
        try:
            bucket = "bench"
            server.make_bucket(bucket)
            so = server.storage_options()
            uri = f"s3://{bucket}/"
            upload(Store("s3", so), uri, count, seed=6)
            loaders = torch_loaders(uri, so, (0,), settings)
            paths: dict[str, Run] = {}
            for name, loader in loaders.items():
                paths[name] = lambda loader=loader: _count(loader)
            missing: list[Result] = []
            try:
                from s3torchconnector import S3IterableDataset as AwsIterable

                aws = DataLoader(AwsIterable.from_prefix(uri, region="us-east-1", endpoint=server.endpoint,
                                                         transform=lambda reader: reader.read()),
                                 batch_size=BATCH, num_workers=0, collate_fn=list)  # fmt: skip
                paths["s3torchconnector S3IterableDataset.from_prefix, DataLoader(num_workers=0)"] = lambda: _count(aws)
            except ImportError:
                missing.append(Result("s3torchconnector", note="not installed"))
            try:
                import s3dlio

                def s3dlio_items() -> tuple[int, int]:
                    loader = s3dlio.create_async_loader(uri, {"batch_size": BATCH, "prefetch": 8})
                    return _count(memoryview(item) for item in loader)

                paths["s3dlio 0.10 create_async_loader(uri, batch_size=32, prefetch=8)"] = s3dlio_items
            except ImportError:
                missing.append(Result("s3dlio", note="not installed"))
            with environment(AWS_ENDPOINT_URL=server.endpoint):  # s3dlio's endpoint
                results = measure(paths, repeat, count, server.proc.pid if server.proc else None)
        finally:
            close_loaders(loaders)
    ours = next(iter(results.values()))
    for r in results.values():
        r.note = f"{r.rate / ours.rate:.2f}x / {r.cpu_ms / ours.cpu_ms:.2f}x"
    return [*results.values(), *missing]


# ============================================================================ report


def print_table(title: str, rows: list[Result], ratio_header: str) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{title}")
    print(f"{'path':<{width}} {'obj/s':>7} {'MB/s':>7} {'CPU ms/obj':>10} {'server ms/obj':>13}  {ratio_header}")
    for r in rows:
        if not r.rate:
            print(f"{r.name:<{width}} {'-':>7} {'-':>7} {'-':>10} {'-':>13}  {r.note}")
            continue
        print(f"{r.name:<{width}} {r.rate:>7,.0f} {r.mbps:>7,.0f} {r.cpu_ms:>10.3f} {r.server_ms:>13.3f}  {r.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=2000, help="gs:// objects of 256 KiB (default 2000)")
    parser.add_argument("--s3-objects", type=int, default=400, help="s3:// objects of 256 KiB (default 400)")
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per path (default 3)")
    parser.add_argument("--only", choices=["gs", "s3"], action="append", help="run only this backend")
    parser.add_argument("--prefetch", type=int, help="our prefetch (default: the package's)")
    parser.add_argument("--io-threads", type=int, help="our io_threads (default: the package's)")
    parser.add_argument("--read-size", type=int, help="our read_size in sample mode (default: the package's)")
    args = parser.parse_args()
    backends = args.only or ["gs", "s3"]
    settings = Settings(args.prefetch, args.io_threads, args.read_size)
    start = time.perf_counter()
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; median of {args.repeat} epochs after "
        "a warm-up, paths interleaved; CPU ms/obj: this process + its workers; server ms/obj: the server"
    )
    print(describe(settings))
    if "gs" in backends:
        rows = bench_gcs(args.objects, args.repeat, settings)
        print_table(f"gs:// on fake-gcs-server, {args.objects} x 256 KiB (goal: >= 0.85 of the ceiling)", rows,
                    "of ceiling")  # fmt: skip
    if "s3" in backends:
        rows = bench_s3(args.s3_objects, args.repeat, settings)
        print_table(f"s3:// on moto, {args.s3_objects} x 256 KiB, all in this process (num_workers=0)", rows,
                    "obj/s / CPU per obj, vs ours (first row)")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
