"""A save killed with SIGKILL part-way leaves the previous checkpoint intact and nothing visible."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from s3dlio_loader.checkpoint import CheckpointNotFoundError, CheckpointStore

WORKER = Path(__file__).resolve().parent / "ckpt_worker.py"
sys.path.insert(0, str(WORKER.parent))

from ckpt_worker import numpy_state  # noqa: E402

SHARD_SIZE = 8 << 10  # numpy_state() is ~50 KiB: 7+ shards


def start_pump(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str | None], threading.Thread]:
    """Read the worker's stdout lines on a thread, so that a silent worker cannot block the test."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def wait_for_line(lines: queue.Queue[str | None], proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line from the worker (exit code {proc.poll()}); stdout={seen!r}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "s3"], indirect=True)
def test_sigkill_during_save_keeps_the_previous_checkpoint(backend):
    uri = backend.uri("run")
    ckpt = CheckpointStore(uri, backend.storage_options, shard_size=SHARD_SIZE)
    previous = numpy_state(1)
    ckpt.save(1, previous)

    args = {"uri": uri, "storage_options": backend.storage_options, "step": 2, "seed": 2, "pause_after": 3,
            "shard_size": SHARD_SIZE}
    proc = subprocess.Popen([sys.executable, str(WORKER), "hang", json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines, pump = start_pump(proc)
    try:
        line = wait_for_line(lines, proc, "PAUSED", timeout=120)
        written, total = map(int, line.split()[1:])
        assert written == 3 and total > written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pump.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # The killed save left shards, but no checkpoint.
    fs = backend.fs()
    left = fs.find(backend.path("run", "step-00000002"))
    assert len([p for p in left if p.endswith(".safetensors")]) >= 3
    assert not any(p.endswith("manifest.json") for p in left)
    observer = CheckpointStore(uri, backend.storage_options)
    assert observer.list() == [1] and observer.latest() == 1
    assert json.loads(fs.cat_file(backend.path("run", "latest")))["step"] == 1
    with pytest.raises(CheckpointNotFoundError):
        observer.load(2)
    loaded = observer.load()
    assert loaded["step"] == 1
    for a, b in zip(previous["weights"], loaded["weights"], strict=True):
        np.testing.assert_array_equal(a, b)

    # Retrying the same step succeeds and leaves only the new save's objects.
    info = observer.save(2, numpy_state(2))
    assert observer.list() == [1, 2] and observer.latest() == 2
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(backend.path("run", "step-00000002")))
    assert names == ["manifest.json"] + [f"shard-{i:05d}.safetensors" for i in range(info.shards)]
    np.testing.assert_array_equal(observer.load(2)["bias"], numpy_state(2)["bias"])
