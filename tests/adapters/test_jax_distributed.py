"""Two real JAX processes on the CPU (``jax.distributed.initialize`` over 127.0.0.1), 2 devices each.

Each process reads its shard (rank = ``jax.process_index()``) into global arrays sharded over
the 4 devices of both processes; the parent checks that the shards are disjoint, that their
union is the dataset, and that each process's addressable part of a global batch is its own data.
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

FILES, ROWS = 4, 24
N = FILES * ROWS
BATCH = 8  # per process

WORKER = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("error")
    import jax, numpy as np
    from s3dlio_loader.adapters.jax import JaxLoader

    uri, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    it = JaxLoader(uri, format="npz", rows=True, batch_size=%(batch)d, shuffle=True, seed=7, num_workers=0)
    out = {"rank": it.loader.rank, "world": it.loader.world_size, "devices": jax.device_count(),
           "local_devices": jax.local_device_count(), "ids": [], "global_shapes": [], "addressable": True}
    for batch in it:
        ids = batch["id"]
        out["global_shapes"].append(list(ids.shape))
        out["addressable"] = out["addressable"] and ids.is_fully_addressable
        shards = sorted(ids.addressable_shards, key=lambda s: s.index[0].start)
        local = np.concatenate([np.asarray(s.data) for s in shards])
        assert np.array_equal(np.concatenate([np.asarray(s.data) for s in sorted(
            batch["x"].addressable_shards, key=lambda s: s.index[0].start)])[:, 0], local.astype(np.float32))
        out["ids"].append(local.tolist())
    print("RESULT=" + json.dumps(out), flush=True)
    jax.distributed.shutdown()
""") % {"batch": BATCH}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_read_disjoint_shards_whose_union_is_the_dataset(tmp_path):
    for f in range(FILES):
        ids = np.arange(f * ROWS, (f + 1) * ROWS, dtype=np.int64)
        write(f"file://{tmp_path}/npz/part-{f}.npz",
              {"x": np.repeat(ids[:, None], 2, axis=1).astype(np.float32), "id": ids})  # fmt: skip
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    port = free_port()
    argv = [sys.executable, "-W", "error", str(script), f"file://{tmp_path}/npz/", str(port)]
    procs = [
        subprocess.Popen([*argv, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
            results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT=")][-1][7:]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert all(r["devices"] == 4 and r["local_devices"] == 2 for r in results)
    for r in results:
        assert r["global_shapes"] == [[2 * BATCH]] * (N // 2 // BATCH), "the global batch spans both processes"
        assert not r["addressable"], "each process holds only its part of the global array"
        assert all(len(b) == BATCH for b in r["ids"])
    shard0 = [i for b in results[0]["ids"] for i in b]
    shard1 = [i for b in results[1]["ids"] for i in b]
    assert set(shard0).isdisjoint(shard1)
    assert sorted(shard0 + shard1) == list(range(N))
    assert shard0 != sorted(shard0), "shuffled"
