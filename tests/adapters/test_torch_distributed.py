"""Two real ranks (gloo on 127.0.0.1, separate processes), each iterating through DataLoader workers.

The ranks get their rank from ``torch.distributed`` only (``RANK``/``WORLD_SIZE`` are not in
their environment), and the DataLoader workers forked from them inherit it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from s3dlio_loader.formats import write

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("error")
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from s3dlio_loader.adapters.torch import S3IterableDataset

    rank, root, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=2)
    result = {}
    for name in ("even", "odd"):
        ds = S3IterableDataset(f"{root}/{name}/", "npz", rows=True, shuffle=True, seed=11)
        ds.set_epoch(1)
        batches = [b["id"].tolist() for b in DataLoader(ds, batch_size=8, num_workers=2)]
        per_batch = S3IterableDataset(f"{root}/{name}/", "npz", rows=True, shuffle=True, seed=11, batch_size=8)
        whole = [b["id"].tolist() for b in DataLoader(per_batch, batch_size=None, num_workers=2)]
        result[name] = {"samples": batches, "batches": whole, "len": len(ds)}
    counts = [None, None]
    dist.all_gather_object(counts, len(result["odd"]["samples"]))
    result["gathered_batch_counts"] = counts
    with open(out, "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_dataset(root: str, files: int, rows: int) -> int:
    for f in range(files):
        ids = np.arange(f * rows, (f + 1) * rows, dtype=np.int64)
        write(f"{root}/part-{f}.npz", {"id": ids})
    return files * rows


def test_two_ranks_get_disjoint_shards_with_equal_batch_counts(tmp_path):
    root = f"file://{tmp_path}/data"
    n_even = write_dataset(f"{root}/even", 4, 30)  # 120 samples: 60 per rank, nothing repeated
    n_odd = write_dataset(f"{root}/odd", 7, 7)  # 49 samples: 25 per rank, one repeated to even them out
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), root, str(outs[r])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    results = [json.loads(o.read_text()) for o in outs]

    even = [[i for b in r["even"]["samples"] for i in b] for r in results]
    assert not set(even[0]) & set(even[1]), "the ranks' shards are disjoint"
    assert sorted(even[0] + even[1]) == list(range(n_even)), "and together they are the dataset"
    assert [r["even"]["len"] for r in results] == [60, 60]

    odd = [[i for b in r["odd"]["samples"] for i in b] for r in results]
    assert set(odd[0]) | set(odd[1]) == set(range(n_odd))
    assert len(odd[0]) == len(odd[1]) == 25, "padded to the same number of samples"
    assert len(set(odd[0]) & set(odd[1])) == 1
    batch_counts = [len(r["odd"]["samples"]) for r in results]
    assert batch_counts[0] == batch_counts[1] and results[0]["gathered_batch_counts"] == batch_counts

    for name, n in (("even", n_even), ("odd", n_odd)):
        whole = [r[name]["batches"] for r in results]
        assert len(whole[0]) == len(whole[1]), "batch mode: the same number of batches on each rank"
        ids = {i for w in whole for b in w for i in b}
        assert ids == set(range(n))
