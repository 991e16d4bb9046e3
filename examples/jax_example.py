"""Train a linear model with JAX on batches sharded over devices, then resume mid-epoch.

A small .npz dataset is written to a temporary directory (file://; s3://, az://, gs:// work
the same way). ``JaxLoader`` reads this process's shard of each epoch in worker processes and
places every batch as a ``jax.Array`` split over the devices (two CPU devices here), with the
next batch transferred while the current one is used. Its ``state_dict`` is saved mid-epoch
and a new loader resumes exactly after the last batch the training loop got.

    python examples/jax_example.py

The workers import this file (they are started with forkserver, because JAX forbids fork):
keep the work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # 2 CPU devices, before jax loads

import numpy as np

from s3dlio_loader.formats import write

FILES, ROWS, FEATURES, BATCH = 4, 64, 4, 32
TRUE_W = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)


def make_dataset(root: str) -> None:
    """Four .npz files of ``x`` float32 [4] and ``y = x @ TRUE_W`` (plus a little noise)."""
    rng = np.random.default_rng(0)
    for f in range(FILES):
        x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
        y = x @ TRUE_W + rng.normal(scale=0.01, size=ROWS).astype(np.float32)
        write(f"file://{root}/part-{f}.npz", {"x": x, "y": y})


def main() -> None:
    import jax
    import jax.numpy as jnp

    from s3dlio_loader.adapters.jax import JaxLoader

    @jax.jit
    def step(w: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - 0.1 * grad, loss

    def make_loader(root: str) -> JaxLoader:
        return JaxLoader(f"file://{root}/", format="npz", rows=True, batch_size=BATCH, shuffle=True, seed=0,
                         num_workers=2)  # fmt: skip

    with tempfile.TemporaryDirectory() as root:
        make_dataset(root)
        print(f"devices: {jax.device_count()}, process {jax.process_index()} of {jax.process_count()}")
        w = jnp.zeros(FEATURES)
        with make_loader(root) as loader:
            per_epoch = len(loader)
            for epoch in range(3):
                for batch in loader:
                    w, loss = step(w, batch["x"], batch["y"])
                print(f"epoch {epoch}: loss {float(loss):.4f}, batch sharded over "
                      f"{len(batch['x'].sharding.device_set)} devices")  # fmt: skip
            print(f"learned w = {[round(float(v), 2) for v in w]} (true: {TRUE_W.tolist()})")

            # Checkpoint in the middle of an epoch, then resume with a new loader.
            taken = []
            for batch in loader:
                taken.append(np.asarray(batch["y"]))
                if len(taken) == 3:
                    state = loader.state_dict()
                    break
        with make_loader(root) as resumed:
            resumed.load_state_dict(state)
            rest = sum(1 for _ in resumed)
        print(f"resumed epoch {state['epoch']} after {len(taken)} of {per_epoch} batches: "
              f"{rest} batches left")  # fmt: skip
    print("done")


if __name__ == "__main__":
    main()
