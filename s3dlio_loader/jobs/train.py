"""``s3dlio-loader train``: train a small torch model on a dataset in storage, end to end.

1. **Data.** A classification dataset is written under ``--uri`` (default
   ``file://./s3dlio-train-data``; any ``s3://``, ``az://``, ``gs://``, ``direct://`` URI with
   ``--storage-option``/``--endpoint``): ``--size`` bytes (256 MiB by default) of float32
   feature vectors in NPZ files (or Parquet, ``--format parquet``), each labelled by a fixed
   random linear rule (the class whose weight vector has the largest dot product), so that
   there is something to learn. A manifest object ``_s3dlio_train.json``, written last,
   describes it: a later run with the same shape reuses the data (``--regenerate`` rewrites it).
2. **Training.** An MLP is trained for ``--epochs`` epochs through
   ``DataLoader(S3IterableDataset(...), num_workers=--workers)``: batches are read and
   collated in the DataLoader workers, straight into shared memory. A progress bar on stderr
   shows samples/s and MB/s.
3. **Summary** on stdout: throughput, the time spent waiting for data against computing,
   loss and accuracy per epoch, accuracy on held-out samples drawn from the same rule.

``main(argv)`` runs it as ``s3dlio-loader train ARGV...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np

from ..cache import get_cache
from ..errors import ConfigError, ObjectNotFoundError, S3dlioError
from ..storage import Store, join_uri, parse_uri

HELP = "train a small torch model on a generated dataset through DataLoader(S3IterableDataset)"

DEFAULT_URI = "file://./s3dlio-train-data"
DEFAULT_SIZE = 256 << 20
MANIFEST = "_s3dlio_train.json"
MANIFEST_VERSION = 1
#: Feature vector length and number of classes of the generated task.
FEATURES = 256
CLASSES = 10
#: Samples per object written (NPZ file, or Parquet file).
ROWS_PER_OBJECT = 8192
#: Samples of the held-out set, drawn in memory from the same rule.
HELD_OUT = 8192
#: Threads writing objects.
WRITERS = 8
#: Hidden width of the MLP.
HIDDEN = 128
LEARNING_RATE = 3e-3
#: Progress-bar refresh interval (seconds).
BAR_INTERVAL = 0.2


@dataclass(frozen=True)
class DataSpec:
    """The shape of a generated dataset; equal specs mean the data can be reused."""

    format: str
    samples: int
    features: int
    classes: int
    rows_per_object: int
    seed: int
    row_group: int = 0  # Parquet rows per row group (one row group is one batch)
    version: int = MANIFEST_VERSION

    @property
    def objects(self) -> int:
        return math.ceil(self.samples / self.rows_per_object)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample as stored (features + label)."""
        return self.features * 4 + 8

    @property
    def extension(self) -> str:
        return ".npz" if self.format == "npz" else ".parquet"

    def object_name(self, i: int) -> str:
        return f"part-{i:05d}{self.extension}"

    def rows_of(self, i: int) -> int:
        return min(self.rows_per_object, self.samples - i * self.rows_per_object)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand's own options (the CLI's global ones are added by the CLI)."""
    from ..cli import _positive_int, _size_arg, human_size

    parser.add_argument("--uri", default=DEFAULT_URI,
                        help=f"where the dataset lives (default: {DEFAULT_URI})")  # fmt: skip
    parser.add_argument("--size", type=_size_arg, default=DEFAULT_SIZE, metavar="BYTES",
                        help=f"dataset size: 64MiB, 1GiB... (default: {human_size(DEFAULT_SIZE)})")  # fmt: skip
    parser.add_argument("--format", choices=("npz", "parquet"), default="npz",
                        help="object format (default: npz)")  # fmt: skip
    parser.add_argument("--epochs", type=_positive_int, default=2, help="epochs (default: 2)")
    parser.add_argument("--batch-size", type=_positive_int, default=512, help="samples per batch (default: 512)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="DataLoader worker processes (default: 2; 0 reads in this process)")  # fmt: skip
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch threads of the model (default: cores left by the workers, at least 1)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the shuffle and the model (default: 0)")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the dataset even if it can be reused")


def cli_command(ctx: Any, args: argparse.Namespace) -> int:
    """The CLI's ``train`` command: ``ctx`` is the CLI's run context (storage options, output streams)."""
    from ..cli import apply_endpoint, build_storage_options

    scheme = parse_uri(args.uri).scheme
    storage_options = build_storage_options(ctx.storage_options, scheme)
    if ctx.endpoint is not None and scheme not in ("file", "direct"):
        apply_endpoint(storage_options, scheme, ctx.endpoint)
    return run(args, storage_options=storage_options, progress=ctx.progress, out=ctx.out, err=ctx.err)


def main(argv: Sequence[str] | None = None) -> int:
    """``s3dlio-loader train ARGV...``; returns the exit code."""
    import sys

    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


# ---------------------------------------------------------------------- the job


def run(args: argparse.Namespace, *, storage_options: dict[str, Any], progress: bool, out: TextIO,
        err: TextIO) -> int:  # fmt: skip
    """Generate (or reuse) the dataset, train, print the summary. Returns 0."""
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (got {args.workers})")
    from ..adapters.torch import S3IterableDataset  # imports torch (MissingDependencyError without it)

    root = parse_uri(args.uri.rstrip("/")).uri + "/"
    store = Store.from_uri(root, storage_options)
    samples = max(args.batch_size, args.size // (FEATURES * 4 + 8))
    per_object = min(ROWS_PER_OBJECT, samples)
    spec = DataSpec(args.format, samples, FEATURES, CLASSES, per_object, args.seed,
                    row_group=min(args.batch_size, per_object) if args.format == "parquet" else 0)  # fmt: skip
    t0 = time.perf_counter()
    reused = not args.regenerate and _existing(store, root) == spec
    if not reused:
        _generate(store, root, spec, progress=progress, err=err)
    t_data = time.perf_counter() - t0
    total_bytes = spec.samples * spec.sample_bytes
    print(f"train: {spec.samples:,} samples ({_mib(total_bytes)}) in {spec.objects} {spec.format} objects at {root} "
          f"({'reused' if reused else 'generated'} in {t_data:.1f} s)", file=out)  # fmt: skip

    dataset = _dataset(S3IterableDataset, root, spec, args, storage_options)
    stats = _train(dataset, spec, args, progress=progress, err=err)
    _summary(stats, spec, args, out)
    return 0


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _existing(store: Store, root: str) -> DataSpec | None:
    """The spec in the dataset's manifest, if the manifest and every object it names are there."""
    try:
        manifest = json.loads(store.get(join_uri(root, MANIFEST)))
        spec = DataSpec(**manifest)
    except (S3dlioError, OSError, ValueError, TypeError):
        return None
    names = {o.uri.rsplit("/", 1)[-1] for o in store.list(root)}
    if not all(spec.object_name(i) in names for i in range(spec.objects)):
        return None
    return spec


def rule_weights(spec: DataSpec) -> np.ndarray:
    """The label rule: ``label = argmax(x @ W)``, W drawn from the seed."""
    return np.random.default_rng([spec.seed, 1]).standard_normal((spec.features, spec.classes)).astype(np.float32)


def make_samples(spec: DataSpec, seed: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of the task: features float32 [n, F] and labels int64 [n]."""
    x = np.random.default_rng(list(seed)).standard_normal((n, spec.features), dtype=np.float32)
    y = np.argmax(x @ rule_weights(spec), axis=1).astype(np.int64)
    return x, y


def _generate(store: Store, root: str, spec: DataSpec, *, progress: bool, err: TextIO) -> None:
    """Write the objects (then the manifest, last); objects of an earlier dataset there are replaced."""
    from tqdm import tqdm

    from ..formats import write

    manifest = join_uri(root, MANIFEST)
    if store.exists(manifest):
        store.delete([manifest])
    try:
        listed = store.list(root)
    except ObjectNotFoundError:
        listed = []
    stale = [o.uri for o in listed if o.uri.rsplit("/", 1)[-1].startswith("part-")]
    if stale:
        store.delete(stale)

    def write_object(i: int) -> int:
        x, y = make_samples(spec, (spec.seed, 0, i), spec.rows_of(i))
        uri = join_uri(root, spec.object_name(i))
        if spec.format == "npz":
            write(uri, {"x": x, "y": y}, store=store)
        else:
            import pyarrow as pa

            table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), spec.features),
                              "y": pa.array(y)})  # fmt: skip
            write(uri, table, store=store, row_group_size=spec.row_group, compression=None)
        return len(y) * spec.sample_bytes

    with tqdm(total=spec.samples * spec.sample_bytes, desc="generate", unit="B", unit_scale=True, file=err,
              disable=not progress, mininterval=BAR_INTERVAL) as bar, ThreadPoolExecutor(WRITERS) as pool:  # fmt: skip
        for nbytes in pool.map(write_object, range(spec.objects)):
            bar.update(nbytes)
    store.put(manifest, json.dumps(asdict(spec)).encode())
    # Listings of this prefix cached (and persisted) by earlier runs show the old objects.
    get_cache().refresh(root)


def _parquet_rows(table: Any) -> dict[str, np.ndarray]:
    """A Parquet row group (pyarrow Table) as ``{"x": [rows, F], "y": [rows]}`` numpy arrays."""
    x = table.column("x").combine_chunks()
    width = x.type.list_size
    return {"x": x.flatten().to_numpy().reshape(-1, width), "y": table.column("y").to_numpy()}


def _dataset(cls: Any, root: str, spec: DataSpec, args: argparse.Namespace, storage_options: dict[str, Any]) -> Any:
    # Block shuffle: objects in a seeded order, samples shuffled within windows of consecutive
    # positions; a batch then reads nearby rows with a few coalesced requests (a global shuffle
    # reads each of its rows with a request of its own).
    common = {"shuffle": "block", "seed": args.seed, "storage_options": storage_options,
              "pattern": f"part-*{spec.extension}"}  # fmt: skip
    if spec.format == "npz":
        # Batch mode: each worker reads and collates whole batches (into shared memory).
        return cls(root, "npz", rows=True, batch_size=args.batch_size, **common)
    # A sample is a row group (a batch of rows) decoded to arrays in the worker.
    return cls(root, "parquet", items="row_group", decode="arrow", transform=_parquet_rows, **common)


@dataclass
class _Epoch:
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    compute: float = 0.0
    loss_sum: float = 0.0
    correct: int = 0


@dataclass
class _Stats:
    epochs: list[_Epoch]
    held_out_accuracy: float
    startup: float


def _train(dataset: Any, spec: DataSpec, args: argparse.Namespace, *, progress: bool, err: TextIO) -> _Stats:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    # Compute threads and DataLoader workers share the cores: oversubscribed OpenMP threads spin
    # against the workers (on 2 cores with 2 workers, 2 threads made each step ~15x slower).
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.workers))
    model = torch.nn.Sequential(torch.nn.Linear(spec.features, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, spec.classes))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(dataset, batch_size=None, num_workers=args.workers,
                        persistent_workers=args.workers > 0)  # fmt: skip
    epochs: list[_Epoch] = []
    total = spec.samples * args.epochs
    t_start = time.perf_counter()
    startup = 0.0
    with tqdm(total=total, desc="train", unit="sample", unit_scale=True, file=err, disable=not progress,
              mininterval=BAR_INTERVAL, smoothing=0.1) as bar:  # fmt: skip
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            stats = _Epoch()
            t_epoch = t_ready = time.perf_counter()
            for batch in loader:
                t_got = time.perf_counter()
                if epoch == 0 and stats.samples == 0:
                    startup = t_got - t_start  # starting the workers and the first batch
                stats.data_wait += t_got - t_ready
                x, y = batch["x"], batch["y"]
                logits = model(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = len(y)
                stats.samples += n
                stats.loss_sum += loss.item() * n
                stats.correct += int((logits.argmax(1) == y).sum())
                t_ready = time.perf_counter()
                stats.compute += t_ready - t_got
                bar.update(n)
                elapsed = t_ready - t_epoch
                bar.set_postfix_str(f"epoch {epoch + 1}/{args.epochs} loss {stats.loss_sum / stats.samples:.3f} "
                                    f"{stats.samples * spec.sample_bytes / 1e6 / max(elapsed, 1e-9):.0f} MB/s",
                                    refresh=False)  # fmt: skip
            stats.seconds = time.perf_counter() - t_epoch
            epochs.append(stats)
    x, y = make_samples(spec, (spec.seed, 2), HELD_OUT)
    with torch.no_grad():
        held_out = float((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).float().mean())
    return _Stats(epochs, held_out, startup)


def _summary(stats: _Stats, spec: DataSpec, args: argparse.Namespace, out: TextIO) -> None:
    print(f"{'epoch':>5} {'samples':>9} {'seconds':>8} {'samples/s':>10} {'MB/s':>8} {'data wait':>10} "
          f"{'compute':>8} {'loss':>7} {'accuracy':>9}", file=out)  # fmt: skip
    for i, e in enumerate(stats.epochs, 1):
        rate = e.samples / e.seconds if e.seconds else 0.0
        print(f"{i:>5} {e.samples:>9,} {e.seconds:>8.2f} {rate:>10,.0f} {rate * spec.sample_bytes / 1e6:>8.1f} "
              f"{e.data_wait:>9.2f}s {e.compute:>7.2f}s {e.loss_sum / max(e.samples, 1):>7.4f} "
              f"{e.correct / max(e.samples, 1):>8.1%}", file=out)  # fmt: skip
    seconds = sum(e.seconds for e in stats.epochs)
    samples = sum(e.samples for e in stats.epochs)
    wait = sum(e.data_wait for e in stats.epochs)
    compute = sum(e.compute for e in stats.epochs)
    rate = samples / seconds if seconds else 0.0
    last = stats.epochs[-1]
    print(f"total: {samples:,} samples in {seconds:.2f} s: {rate:,.0f} samples/s, "
          f"{rate * spec.sample_bytes / 1e6:.1f} MB/s with {args.workers} DataLoader worker(s)", file=out)  # fmt: skip
    print(f"time: waiting for data {wait:.2f} s ({wait / seconds:.0%}, of which {stats.startup:.2f} s starting the "
          f"workers and the first batch), computing {compute:.2f} s ({compute / seconds:.0%})", file=out)  # fmt: skip
    print(f"final loss {last.loss_sum / max(last.samples, 1):.4f}, training accuracy (last epoch) "
          f"{last.correct / max(last.samples, 1):.1%}, held-out accuracy {stats.held_out_accuracy:.1%} "
          f"({HELD_OUT:,} samples)", file=out)  # fmt: skip


__all__ = ["HELP", "DataSpec", "add_arguments", "cli_command", "main", "make_samples", "run"]
