"""Train a tiny Keras model on a tf.data pipeline fed by s3dlio-loader.

A small .npz dataset is written to a temporary directory (file://; an s3://, az:// or gs://
prefix works the same way), read by the loader's worker processes into shared memory, and
handed to TensorFlow as a ``tf.data.Dataset`` whose element signature is derived from the data.

    python examples/tf_example.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up banner

import numpy as np

from s3dlio_loader.formats import write

FILES, ROWS, FEATURES = 4, 64, 8


def make_dataset(root: str) -> None:
    """Four .npz files: ``x`` float32 [8] and ``y`` int32, the label of a linear rule."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES).astype(np.float32)
    for f in range(FILES):
        x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
        write(f"file://{root}/part-{f}.npz", {"x": x, "y": (x @ w > 0).astype(np.int32)})


def main() -> None:
    import keras
    import tensorflow as tf

    from s3dlio_loader.adapters.tf import tf_dataset

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as root:
        make_dataset(root)
        ds = tf_dataset(f"file://{root}/", format="npz", rows=True, batch_size=32, shuffle=True, seed=0,
                        num_workers=2, drop_last=True)  # fmt: skip
        print(f"element_spec: {ds.element_spec}")
        print(f"batches per epoch: {int(ds.cardinality())}")

        # An ordinary tf.data pipeline on top: map, then Keras.
        train = ds.map(lambda b: (b["x"], b["y"]), num_parallel_calls=tf.data.AUTOTUNE)
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1)])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(0.05),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])  # fmt: skip
        history = model.fit(train, epochs=3, verbose=0, shuffle=False)  # the loader shuffles, per epoch
        for epoch, (loss, acc) in enumerate(zip(history.history["loss"], history.history["binary_accuracy"],
                                                strict=True)):  # fmt: skip
            print(f"epoch {epoch}: loss {loss:.3f} accuracy {acc:.3f}")
    print("done")


if __name__ == "__main__":
    main()
