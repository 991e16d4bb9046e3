"""Benchmark: GB/s per core of generated unique data, s3dlio_loader.datagen against s3dlio and numpy.

Run:  .venv/bin/python benchmarks/datagen.py [--size 16MiB] [--rounds 9] [--threads N]

Everything runs in one thread (one core; s3dlio is asked for ``threads=1``) and is measured in
interleaved rounds (a round runs each candidate once, so load changes on the machine hit every
candidate alike); the table shows the median and the best round, and the ratio of ours to the
peer doing the same work in the same run. Workloads:

* ``stream``: unique, incompressible bytes into one reused buffer. Ours:
  ``DataGenerator.fill``; s3dlio: ``generate_into_buffer(buf, 1, 1, threads=1)``.
* ``stream dedup=2 compress=2``: the same with ratios.
* ``fresh``: a new buffer per call (page-fault bound, like any fresh allocation). Ours:
  ``generate_data`` (a bytearray); s3dlio: ``generate_data_with_threads(size, threads=1)``;
  numpy: ``Generator.bytes``.

s3dlio rows appear when ``import s3dlio`` works. ``--threads N`` also measures N threads
filling their own buffers at once (aggregate GB/s), ours only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from s3dlio_loader.datagen import DataGenerator, generate_data

GOAL_GBPS = 5.0  # per core, unique data (the project's goal)


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


class Row:
    """One workload: our callable and the peers' (name -> callable), all producing ``size`` bytes."""

    def __init__(self, name: str, ours: Callable[[], object], peers: dict[str, Callable[[], object]]) -> None:
        self.name, self.ours, self.peers = name, ours, peers


def workloads(size: int) -> list[Row]:
    gen = DataGenerator()
    ratio_gen = DataGenerator(dedup=2, compress=2)
    buf = np.empty(size, np.uint8)
    gen.fill(buf)  # touch the pages once
    peer_buf = np.empty(size, np.uint8)
    peer_buf.fill(1)
    rng = np.random.default_rng()
    try:
        import s3dlio
    except ImportError:
        s3dlio = None
    rows = [
        Row(f"stream: fill a reused {size >> 20} MiB buffer", lambda: gen.fill(buf), {}),
        Row("stream dedup=2 compress=2", lambda: ratio_gen.fill(buf), {}),
        Row("fresh buffer per call", lambda: generate_data(size), {"numpy": lambda: rng.bytes(size)}),
    ]
    if s3dlio is not None:
        rows[0].peers["s3dlio"] = lambda: s3dlio.generate_into_buffer(peer_buf, 1, 1, 1)
        rows[1].peers["s3dlio"] = lambda: s3dlio.generate_into_buffer(peer_buf, 2, 2, 1)
        rows[2].peers["s3dlio"] = lambda: s3dlio.generate_data_with_threads(size, 1, 1, 1)
    return rows


def measure(rows: list[Row], size: int, rounds: int) -> dict[tuple[int, str], list[float]]:
    """GB/s per round of every (row, candidate); candidate ``"ours"`` or a peer's name."""
    cands = [((i, "ours"), row.ours) for i, row in enumerate(rows)]
    cands += [((i, name), fn) for i, row in enumerate(rows) for name, fn in row.peers.items()]
    for _, fn in cands:  # warm up
        fn()
    rates: dict[tuple[int, str], list[float]] = {key: [] for key, _ in cands}
    for _ in range(rounds):
        for key, fn in cands:
            t0 = time.perf_counter()
            fn()
            rates[key].append(size / (time.perf_counter() - t0) / 1e9)
    return rates


def threaded(size: int, threads: int, seconds: float) -> float:
    """Aggregate GB/s of ``threads`` threads, each filling its own buffer for ``seconds``."""
    done = [0] * threads
    stop = threading.Event()

    def work(i: int) -> None:
        gen = DataGenerator().fork(i)
        buf = np.empty(size, np.uint8)
        gen.fill(buf)
        while not stop.is_set():
            gen.fill(buf)
            done[i] += size

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.2)  # let every thread start and touch its buffer
    start_bytes, t0 = sum(done), time.perf_counter()
    time.sleep(seconds)
    total = sum(done) - start_bytes
    elapsed = time.perf_counter() - t0
    stop.set()
    for w in workers:
        w.join()
    return total / elapsed / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="16MiB", help="bytes per call (default 16MiB)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--threads", type=int, default=0, help="also measure N threads at once")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of the threaded run")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    rows = workloads(size)
    rates = measure(rows, size, args.rounds)
    med = {key: statistics.median(r) for key, r in rates.items()}
    best = {key: max(r) for key, r in rates.items()}
    width = max(len(r.name) for r in rows)
    print(f"generated data, one thread, {size >> 20} MiB per call, {args.rounds} interleaved rounds, "
          "GB/s median (best)")
    print(f"{'workload':<{width}}  {'ours':>13}  {'s3dlio':>13}  {'ours/s3dlio':>11}  {'numpy':>13}  "
          f"{'ours/numpy':>10}")

    def cell(key: tuple[int, str]) -> str:
        return f"{med[key]:6.2f} ({best[key]:5.2f})" if key in med else f"{'-':>13}"

    def ratio(i: int, peer: str) -> str:
        return f"{med[(i, 'ours')] / med[(i, peer)]:.2f}x" if (i, peer) in med else "-"

    for i, row in enumerate(rows):
        print(f"{row.name:<{width}}  {cell((i, 'ours'))}  {cell((i, 's3dlio'))}  {ratio(i, 's3dlio'):>11}  "
              f"{cell((i, 'numpy'))}  {ratio(i, 'numpy'):>10}")
    if not rows[0].peers:
        print("s3dlio: not installed (pip install s3dlio to compare in the same run)")
    ours = med[(0, "ours")]
    verdict = "meets" if ours >= GOAL_GBPS else "misses"
    print(f"unique-data stream: {ours:.2f} GB/s per core ({verdict} the {GOAL_GBPS:g} GB/s/core goal)")
    if args.threads:
        agg = threaded(size, args.threads, args.seconds)
        print(f"{args.threads} threads filling their own buffers: {agg:.2f} GB/s aggregate "
              f"({agg / args.threads:.2f} GB/s per thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
