"""Read any s3dlio-loader format through grain, with ``GrainSource``.

``GrainSource`` is a grain ``RandomAccessDataSource``: record ``i`` is sample ``i`` of the
dataset, and grain's batched access (``__getitems__``) reads a whole batch with coalesced
requests. grain does the shuffling, sharding and worker processes.

    python examples/grain_example.py

Without grain installed (``pip install 's3dlio-loader[jax]'``) the example shows the data
source used directly, which is all grain does with it.
"""

from __future__ import annotations

import tempfile

import numpy as np

from s3dlio_loader.adapters.grain import GrainSource
from s3dlio_loader.formats import write

FILES, ROWS = 3, 20


def make_dataset(root: str) -> None:
    """Three .npz files of 20 rows: ``id`` int64 and ``x`` float32 [4]."""
    for f in range(FILES):
        ids = np.arange(f * ROWS, (f + 1) * ROWS)
        write(f"file://{root}/part-{f}.npz", {"id": ids, "x": np.repeat(ids[:, None], 4, axis=1).astype(np.float32)})


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        make_dataset(root)
        source = GrainSource(f"file://{root}/", format="npz", rows=True)
        print(f"records: {len(source)}")
        print(f"record 7: id={int(source[7]['id'])} x={source[7]['x'].tolist()}")
        batch = source.__getitems__([59, 0, 21])  # what grain calls for a batch of keys
        print(f"records 59, 0, 21: ids={[int(r['id']) for r in batch]}")

        try:
            import grain
        except ImportError:
            print("grain is not installed: pip install 's3dlio-loader[jax]' to run the grain pipeline")
            print("done")
            return

        ds = grain.MapDataset.source(source).shuffle(seed=0).map(lambda r: r["id"]).batch(16)
        ids = [int(i) for b in ds for i in np.asarray(b)]
        print(f"grain MapDataset: {len(ids)} records in {len(ds)} shuffled batches, first ids {ids[:5]}")

        sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=grain.sharding.NoSharding(),
                                              shuffle=True, num_epochs=1, seed=0)  # fmt: skip
        loader = grain.DataLoader(data_source=source, sampler=sampler,
                                  operations=[grain.transforms.Batch(batch_size=16)], worker_count=0)  # fmt: skip
        shapes = [tuple(b["x"].shape) for b in loader]
        print(f"grain DataLoader: batches of x with shapes {shapes}")
    print("done")


if __name__ == "__main__":
    main()
