"""The TensorFlow adapter: real tf.data pipelines and Keras training over the engine's worker processes.

The loader's workers are forked after TensorFlow has computed in this process (tf ops, tf.data
and Keras ``fit`` run before and between them): that is the fork-safety claim of the adapter.
"""

from __future__ import annotations

import gc
import glob
import sys

import numpy as np
import pytest
import tensorflow as tf

from s3dlio_loader import ConfigError, Loader, MissingDependencyError
from s3dlio_loader.adapters.tf import from_loader, output_signature, tf_dataset
from s3dlio_loader.formats import write

FILES, ROWS = 4, 24
N = FILES * ROWS


@pytest.fixture
def npz_uri(tmp_path):
    """Four .npz files of 24 rows: ``x`` float32 [8] (row i is filled with i), ``id`` int64, ``label`` int32."""
    for f in range(FILES):
        ids = np.arange(f * ROWS, (f + 1) * ROWS, dtype=np.int64)
        write(f"file://{tmp_path}/npz/part-{f}.npz",
              {"x": np.repeat(ids[:, None], 8, axis=1).astype(np.float32), "id": ids,
               "label": (ids % 2).astype(np.int32)})  # fmt: skip
    return f"file://{tmp_path}/npz/"


@pytest.fixture
def raw_uri(tmp_path):
    for i in range(10):
        write(f"file://{tmp_path}/raw/obj-{i:02d}", bytes([i]) * (100 + i), format="raw")
    return f"file://{tmp_path}/raw/"


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = set(glob.glob("/dev/shm/s3dlio-*"))
    yield
    gc.collect()
    assert set(glob.glob("/dev/shm/s3dlio-*")) - before == set(), "a shared-memory segment outlived its loader"


def ids_of(ds) -> list[int]:
    return [int(v) for batch in ds for v in batch["id"].numpy()]


def test_signature_of_npz_rows_is_derived_from_the_data(npz_uri):
    ds = tf_dataset(npz_uri, format="npz", rows=True, batch_size=10, num_workers=0)
    assert ds.element_spec == {
        "x": tf.TensorSpec((None, 8), tf.float32),
        "id": tf.TensorSpec((None,), tf.int64),
        "label": tf.TensorSpec((None,), tf.int32),
    }
    batches = list(ds)
    assert [int(b["id"].shape[0]) for b in batches] == [10] * 9 + [6]
    assert ids_of(batches) == list(range(N))
    assert np.array_equal(batches[3]["x"].numpy()[:, 0], np.arange(30, 40, dtype=np.float32))


def test_raw_objects_become_tf_string(raw_uri):
    ds = tf_dataset(raw_uri, format="raw", batch_size=4, num_workers=2)
    assert ds.element_spec == tf.TensorSpec((None,), tf.string)
    values = [v for batch in ds for v in batch.numpy().tolist()]
    assert values == [bytes([i]) * (100 + i) for i in range(10)]
    lengths = ds.map(lambda b: tf.strings.length(b)).unbatch()
    assert [int(n) for n in lengths] == [100 + i for i in range(10)]


def test_real_pipeline_with_workers_forked_after_tf_computed(npz_uri):
    assert float(tf.reduce_sum(tf.matmul(tf.ones((64, 64)), tf.ones((64, 64))))) == 64.0**3  # TF thread pools up
    ds = tf_dataset(npz_uri, format="npz", rows=True, batch_size=16, num_workers=2, shuffle=True, seed=3)
    pipeline = (ds.unbatch()
                .map(lambda e: {"id": e["id"], "double": e["x"][0] * 2.0}, num_parallel_calls=2)
                .filter(lambda e: e["id"] >= 0)
                .batch(7)
                .prefetch(tf.data.AUTOTUNE))  # fmt: skip
    first = [(int(i), float(d)) for b in pipeline for i, d in zip(b["id"].numpy(), b["double"].numpy(), strict=True)]
    assert sorted(i for i, _ in first) == list(range(N))
    assert all(d == 2.0 * i for i, d in first)
    second = [int(i) for b in pipeline for i in b["id"].numpy()]  # the next iteration is the next epoch
    assert sorted(second) == list(range(N))
    assert second != [i for i, _ in first], "each epoch is shuffled anew"


def test_keras_fit_on_the_dataset(npz_uri):
    import keras

    keras.utils.set_random_seed(0)
    ds = tf_dataset(npz_uri, format="npz", rows=True, batch_size=16, num_workers=2, shuffle=True, drop_last=True)
    train = ds.map(lambda b: (b["x"] / float(N), b["label"]))
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit(train, epochs=2, verbose=0, shuffle=False)  # the loader shuffles
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))
    preds = model.predict(train.map(lambda x, y: x), verbose=0)
    assert preds.shape == (N // 16 * 16, 1)


def test_input_context_shards_disjointly(npz_uri):
    shards = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        shards.append(ids_of(tf_dataset(npz_uri, format="npz", rows=True, batch_size=8, num_workers=0,
                                        shuffle=True, seed=1, input_context=ctx)))  # fmt: skip
    assert len(shards[0]) == len(shards[1]) == N // 2
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(N))


def test_distribute_datasets_from_function(npz_uri):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    def dataset_fn(ctx):
        return tf_dataset(npz_uri, format="npz", rows=True, num_workers=0, input_context=ctx,
                          batch_size=ctx.get_per_replica_batch_size(12))  # fmt: skip

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    seen = [int(i) for batch in dist for i in strategy.experimental_local_results(batch["id"])[0].numpy()]
    assert seen == list(range(N))


def test_parquet_and_tfrecord_signatures(tmp_path):
    pq_uri = f"file://{tmp_path}/t.parquet"
    write(pq_uri, {"a": list(range(10)), "f": [i / 2 for i in range(10)], "s": [f"row{i}" for i in range(10)]},
          row_group_size=4)  # fmt: skip
    ds = tf_dataset(pq_uri, batch_size=4, num_workers=0, items="row", decode="numpy")
    assert ds.element_spec == {"a": tf.TensorSpec((None,), tf.int64), "f": tf.TensorSpec((None,), tf.float64),
                               "s": tf.TensorSpec((None,), tf.string)}  # fmt: skip
    rows = [(int(a), s.decode()) for b in ds for a, s in zip(b["a"].numpy(), b["s"].numpy(), strict=True)]
    assert rows == [(i, f"row{i}") for i in range(10)]

    tfr_uri = f"file://{tmp_path}/t.tfrecord"
    write(tfr_uri, [{"label": i, "v": [float(i)] * 3, "name": b"n%d" % i} for i in range(6)])
    features = {"label": ("int64", ()), "v": ("float32", (3,)), "name": ("bytes", ())}
    ds = tf_dataset(tfr_uri, batch_size=4, num_workers=2, features=features)
    assert ds.element_spec == {"label": tf.TensorSpec((None,), tf.int64), "v": tf.TensorSpec((None, 3), tf.float32),
                               "name": tf.TensorSpec((None,), tf.string)}  # fmt: skip
    # The same records parsed by TensorFlow itself agree with ours.
    parsed = tf.data.TFRecordDataset(str(tmp_path / "t.tfrecord")).map(lambda r: tf.io.parse_single_example(r, {
        "label": tf.io.FixedLenFeature([], tf.int64), "v": tf.io.FixedLenFeature([3], tf.float32),
        "name": tf.io.FixedLenFeature([], tf.string)})).batch(4)  # fmt: skip
    for ours, theirs in zip(ds, parsed, strict=True):
        for key in features:
            assert np.array_equal(ours[key].numpy(), theirs[key].numpy())


def test_from_loader_and_explicit_signature(npz_uri):
    loader = Loader(npz_uri, format="npz", rows=True, batch_size=32, num_workers=0)
    sig = {"x": tf.TensorSpec((None, 8), tf.float32), "id": tf.TensorSpec((None,), tf.int64),
           "label": tf.TensorSpec((None,), tf.int32)}  # fmt: skip
    assert output_signature(loader) == sig
    ds = from_loader(loader, output_signature=sig, prefetch=None)
    assert ids_of(ds) == list(range(N))
    assert loader.epoch == 0 and loader.state_dict()["consumed"] == N
    loader.set_epoch(5)
    assert ids_of(ds) == list(range(N)) and loader.epoch == 5


def test_samples_that_do_not_stack_are_explained(tmp_path):
    for i in range(3):
        write(f"file://{tmp_path}/v/a{i}.npy", np.zeros(i + 1, np.float32))
    with pytest.raises(ConfigError, match="do not stack"):
        tf_dataset(f"file://{tmp_path}/v/", format="npy", batch_size=3, num_workers=0)
    # A transform that makes them uniform fixes it (it runs in the workers too).
    ds = tf_dataset(f"file://{tmp_path}/v/", format="npy", batch_size=3, num_workers=1, transform=_pad4)
    assert ds.element_spec == tf.TensorSpec((None, 4), tf.float32)
    assert [b.shape.as_list() for b in ds] == [[3, 4]]


def _pad4(a):
    return np.pad(a, (0, 4 - len(a)))


def test_an_abandoned_iteration_releases_its_workers_and_memory(npz_uri):
    ds = tf_dataset(npz_uri, format="npz", rows=True, batch_size=4, num_workers=2)
    assert len(list(ds.take(2))) == 2
    assert ids_of(ds.take(3)) == list(range(12)), "a new iteration restarts the abandoned epoch"


def test_missing_tensorflow_names_the_extra(monkeypatch, npz_uri):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependencyError, match=r"s3dlio-loader\[tf\]"):
        tf_dataset(npz_uri, format="npz", rows=True)
