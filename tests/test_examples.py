"""The scripts in examples/, run as a user runs them (a fresh interpreter, warnings as errors).

One test function per example.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 240) -> str:
    """Run ``examples/<name>`` with ``args``; return its stdout (the test fails with its output otherwise)."""
    proc = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_torch_example(tmp_path):
    out = run_example("torch_example.py", f"file://{tmp_path}/data")
    assert "wrote 2048 samples in 8 npz objects" in out
    assert "sample mode, epoch 1: 2048 samples" in out
    assert "a batch: x (64, 16) torch.float32, y (64,)" in out
    assert "batch mode: 32 batches of 64 (len(loader) = 32), same order with 0 workers: True" in out
    assert "resumed: state 320 samples into epoch 0, 1728 more to the end" in out
    assert "map-style: rank shards of 1024 and 1024 samples, disjoint" in out


def run_framework_example(name: str, timeout: float = 300) -> str:
    """``run_example`` for the TF/JAX/grain examples: a clean XLA/TF environment, and no JAX fork warning
    (JAX prints it from an at-fork hook, so it never fails the script by itself)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / name)], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "os.fork() was called" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stdout.rstrip().endswith("done"), proc.stdout
    return proc.stdout


def test_tf_example():
    import re

    out = run_framework_example("tf_example.py")
    assert "element_spec: {'x': TensorSpec(shape=(None, 8), dtype=tf.float32, name=None), " \
           "'y': TensorSpec(shape=(None,), dtype=tf.int32, name=None)}" in out  # fmt: skip
    assert "batches per epoch: 8" in out
    losses = [float(v) for v in re.findall(r"^epoch \d: loss ([0-9.]+)", out, re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0], out


def test_jax_example():
    import re

    out = run_framework_example("jax_example.py")
    assert "devices: 2, process 0 of 1" in out
    losses = [float(v) for v in re.findall(r"^epoch \d: loss ([0-9.]+), batch sharded over 2 devices", out, re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0] / 10, out
    assert "resumed epoch 3 after 3 of 8 batches: 5 batches left" in out


def test_grain_example():
    import importlib.util

    out = run_framework_example("grain_example.py")
    assert "records: 60" in out
    assert "record 7: id=7 x=[7.0, 7.0, 7.0, 7.0]" in out
    assert "records 59, 0, 21: ids=[59, 0, 21]" in out
    if importlib.util.find_spec("grain") is None:
        assert "grain is not installed" in out
    else:
        assert "grain MapDataset: 60 records in 4 shuffled batches" in out
        assert "grain DataLoader: batches of x with shapes [(16, 4), (16, 4), (16, 4), (12, 4)]" in out
