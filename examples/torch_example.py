"""PyTorch: read a dataset in object storage through ``DataLoader(S3IterableDataset(...))``.

    python examples/torch_example.py [URI] [--storage-option KEY=VALUE ...]

URI is where the example writes its small dataset (default: a temporary directory); any
``s3://``, ``gs://``, ``az://`` or ``file://`` prefix works, with fsspec storage options such
as ``--storage-option client_kwargs='{"endpoint_url": "http://127.0.0.1:9000"}'``.
It shows, in turn:

1. sample mode: the DataLoader batches samples; two shuffled epochs (``set_epoch``);
2. batch mode: the dataset yields whole batches collated in the workers, in plan order;
3. a checkpoint in the middle of an epoch, and resuming from it with another worker count;
4. a map-style dataset with a ``DistributedSampler`` (as each of two ranks would see it).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from s3dlio_loader.adapters.torch import S3IterableDataset, S3MapDataset, s3dlio_collate
from s3dlio_loader.formats import write

FILES, ROWS, FEATURES = 8, 256, 16


def make_dataset(root: str, storage_options: dict) -> int:
    """FILES .npz objects of ROWS rows: ``x`` float32 features, ``y`` labels, ``id`` the global row number."""
    rng = np.random.default_rng(0)
    for f in range(FILES):
        ids = np.arange(f * ROWS, (f + 1) * ROWS)
        x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
        write(f"{root}/part-{f:03d}.npz", {"x": x, "y": (x[:, 0] > 0).astype(np.int64), "id": ids},
              storage_options=storage_options)  # fmt: skip
    return FILES * ROWS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("uri", nargs="?", help="where to write the example dataset (default: a temporary directory)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option; VALUE is parsed as JSON when it parses")  # fmt: skip
    args = parser.parse_args()
    options = {}
    for item in args.storage_option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    root = (args.uri or f"file://{tempfile.mkdtemp(prefix='s3dlio-torch-example-')}").rstrip("/")
    n = make_dataset(root, options)
    print(f"wrote {n} samples in {FILES} npz objects under {root}/")

    # 1. Sample mode: rows of the .npz files are the samples; the DataLoader makes batches.
    dataset = S3IterableDataset.from_prefix(f"{root}/", format="npz", rows=True, shuffle=True, seed=42,
                                            storage_options=options)  # fmt: skip
    loader = DataLoader(dataset, batch_size=64, num_workers=2, collate_fn=s3dlio_collate)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        ids = [int(i) for batch in loader for i in batch["id"]]
        assert sorted(ids) == list(range(n)), "every sample exactly once per epoch"
        epochs.append(ids)
        print(f"sample mode, epoch {epoch}: {len(ids)} samples, first ids {ids[:5]}")
    assert epochs[0] != epochs[1], "set_epoch reshuffles"
    batch = next(iter(loader))
    print(f"a batch: x {tuple(batch['x'].shape)} {batch['x'].dtype}, y {tuple(batch['y'].shape)}")

    # 2. Batch mode: the dataset yields batches (collated in the workers into shared memory).
    batched = S3IterableDataset(f"{root}/", "npz", rows=True, batch_size=64, shuffle=True, seed=42,
                                storage_options=options)  # fmt: skip
    batches = DataLoader(batched, batch_size=None, num_workers=2, persistent_workers=True)
    order = [batch["id"].tolist() for batch in batches]
    print(f"batch mode: {len(order)} batches of {len(order[0])} (len(loader) = {len(batches)}), same order "
          f"with 0 workers: {order == [b['id'].tolist() for b in DataLoader(batched, batch_size=None)]}")  # fmt: skip

    # 3. Checkpoint after 5 batches; a new process would resume from the saved state.
    it = iter(DataLoader(batched, batch_size=None, num_workers=2))
    seen = [i for _ in range(5) for i in next(it)["id"].tolist()]
    del it
    state = batched.state_dict(batches=5)
    resumed = S3IterableDataset(f"{root}/", "npz", rows=True, batch_size=64, shuffle=True, seed=42,
                                storage_options=options)  # fmt: skip
    resumed.load_state_dict(state)
    rest = [i for batch in DataLoader(resumed, batch_size=None, num_workers=1) for i in batch["id"].tolist()]
    assert sorted(seen + rest) == list(range(n)), "resuming neither repeats nor skips a sample"
    print(f"resumed: state {state['consumed']} samples into epoch {state['epoch']}, {len(rest)} more to the end")

    # 4. Map-style with a DistributedSampler: the two ranks' shards are disjoint.
    mapped = S3MapDataset(f"{root}/", "npz", rows=True, storage_options=options)
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(mapped, num_replicas=2, rank=rank, shuffle=True, seed=0)
        shards.append({int(i) for batch in DataLoader(mapped, batch_size=64, sampler=sampler) for i in batch["id"]})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == n
    print(f"map-style: rank shards of {len(shards[0])} and {len(shards[1])} samples, disjoint")


if __name__ == "__main__":
    main()
