"""Subprocess entry points for the checkpoint tests (not collected by pytest).

Run as ``python ckpt_worker.py <command> <json args>``. Things that must not happen inside
the pytest process run here: JAX (once its backend has run, every later ``os.fork`` in the
session warns), torch.distributed process groups, and a save that the test SIGKILLs.
Each command prints ``OK`` (or ``PAUSED``) on success.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import numpy as np

from s3dlio_loader.checkpoint import CheckpointStore, ShardWritten


def numpy_state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "weights": [rng.standard_normal((64, 32)).astype(np.float32) for _ in range(6)],
        "bias": rng.standard_normal(128),
        "step": seed,
    }


# ---------------------------------------------------------------------- SIGKILL during a save


def cmd_hang(args: dict) -> None:
    """Save ``step`` and stop for good after ``pause_after`` shards are stored."""

    def progress(event: ShardWritten) -> None:
        if event.index + 1 >= args["pause_after"]:
            print("PAUSED", event.index + 1, event.total, flush=True)
            while True:
                time.sleep(60)

    ckpt = CheckpointStore(args["uri"], args["storage_options"], progress=progress, max_in_flight=1,
                           shard_size=args["shard_size"])
    ckpt.save(args["step"], numpy_state(args["seed"]))
    print("NOT PAUSED", flush=True)


# ---------------------------------------------------------------------- JAX


def cmd_jax(args: dict) -> None:
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    Adam = collections.namedtuple("Adam", ["count", "mu", "nu"])
    key = jax.random.PRNGKey(0)
    params = {
        "dense": {"kernel": jax.random.normal(key, (16, 8), jnp.bfloat16), "bias": jnp.zeros((8,), jnp.float32)},
        "embed": jnp.arange(24, dtype=jnp.int32).reshape(4, 6),
        "layers": [jnp.ones((3,), jnp.float16), (jnp.full((), 2.5, jnp.float32), jnp.zeros((0, 4)))],
    }
    opt = Adam(jnp.asarray(3, jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params),
               jax.tree_util.tree_map(jnp.ones_like, params))
    state = {"params": params, "opt": opt, "step": 7, "name": "run", "f8": jnp.ones((4,), jnp.float8_e4m3fn),
             "i4": jnp.array([1, -2, 3], jnp.int4)}
    ckpt = CheckpointStore(args["uri"], args["storage_options"], shard_size=256)
    ckpt.save(5, state)

    loaded = ckpt.load()
    flat_a = jax.tree_util.tree_leaves(state)
    flat_b = jax.tree_util.tree_leaves(loaded)
    assert len(flat_a) == len(flat_b), (len(flat_a), len(flat_b))
    for a, b in zip(flat_a, flat_b, strict=True):
        if isinstance(a, jax.Array):
            assert isinstance(b, jax.Array), type(b)
            assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        else:
            assert a == b and type(a) is type(b), (a, b)
    assert type(loaded["opt"]).__name__ == "Adam" and loaded["opt"]._fields == ("count", "mu", "nu")
    assert isinstance(loaded["params"]["layers"][1], tuple)

    as_numpy = ckpt.load(as_="numpy")
    assert isinstance(as_numpy["params"]["dense"]["kernel"], np.ndarray)
    assert as_numpy["params"]["dense"]["kernel"].dtype == ml_dtypes.bfloat16

    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    seen = []

    def choose(path: str, shape: tuple, dtype: str):
        seen.append(path)
        return sharding

    placed = ckpt.load(sharding=choose)
    assert placed["params"]["embed"].sharding == sharding
    assert "state['params']['dense']['kernel']" in seen, seen

    # numpy float64 loaded as JAX with x64 off must fail loudly, never narrow silently.
    ckpt.save(6, {"x": np.arange(3, dtype=np.float64)})
    from s3dlio_loader.checkpoint import CheckpointError

    try:
        ckpt.load(6, as_="jax")
    except CheckpointError as exc:
        assert "jax_enable_x64" in str(exc), exc
    else:
        raise AssertionError("float64 as JAX with x64 disabled did not raise")
    print("OK", flush=True)


# ---------------------------------------------------------------------- torch.distributed.checkpoint


def _dcp_state(rank: int, world: int, *, full: bool) -> dict:
    import torch

    state: dict = {
        "replicated": torch.arange(10, dtype=torch.float32) * 3,
        "bf16": torch.linspace(-1, 1, 12, dtype=torch.float32).to(torch.bfloat16).reshape(3, 4),
        "extra": {"lr": 0.01, "names": ["a", "b"]},
    }
    ranks = range(world) if full else [rank]
    for r in ranks:
        state[f"rank{r}"] = torch.full((4, 3), float(r + 1)) + torch.arange(3)
    return state


def _dtensor_full() -> object:
    import torch

    return torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)


def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)


def cmd_dcp_ranks(args: dict) -> None:
    """Save from ``world`` ranks, then load on the same ranks (one process group for both)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from s3dlio_loader.checkpoint import DCPStorageReader, DCPStorageWriter

    rank, world = args["rank"], args["world"]
    _init(rank, world, args["port"])
    mesh = init_device_mesh("cpu", (world,))
    state = _dcp_state(rank, world, full=False)
    state["sharded"] = distribute_tensor(_dtensor_full(), mesh, [Shard(0)])
    dcp.save(state, storage_writer=DCPStorageWriter(args["uri"], args["storage_options"], shard_size=64))
    dist.barrier()

    target = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else {"lr": 0.0, "names": []})
              for k, v in state.items() if k != "sharded"}
    target["sharded"] = distribute_tensor(torch.zeros(8, 6), mesh, [Shard(0)])
    dcp.load(target, storage_reader=DCPStorageReader(args["uri"], args["storage_options"]))
    assert torch.equal(target["sharded"].full_tensor(), _dtensor_full())
    _check_loaded(target, _dcp_state(rank, world, full=False))
    dist.barrier()
    dist.destroy_process_group()
    print("OK", flush=True)


def cmd_dcp_load_one(args: dict) -> None:
    """Load everything the ``saved_world`` ranks wrote into one process, without a process group."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    from s3dlio_loader.checkpoint import DCPStorageReader

    expected = _dcp_state(0, args["saved_world"], full=True)
    target = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else {"lr": 0.0, "names": []})
              for k, v in expected.items()}
    target["sharded"] = torch.zeros(8, 6)  # a plain tensor gathers both ranks' shards
    # torch's own notice, given even with no_dist=True.
    warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
    dcp.load(target, storage_reader=DCPStorageReader(args["uri"], args["storage_options"]), no_dist=True)
    assert torch.equal(target["sharded"], _dtensor_full()), target["sharded"]
    _check_loaded(target, expected)
    print("OK", flush=True)


def _check_loaded(target: dict, expected: dict) -> None:
    import torch

    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert target[key].dtype == value.dtype and torch.equal(target[key], value), (key, target[key], value)
        else:
            assert target[key] == value, (key, target[key], value)


COMMANDS = {"hang": cmd_hang, "jax": cmd_jax, "dcp-ranks": cmd_dcp_ranks, "dcp-load-one": cmd_dcp_load_one}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))
