"""The JAX adapter: sharded device placement, device prefetch, resumable state, worker start method.

Everything that initialises a JAX backend runs in a subprocess: once a backend exists in a
process, JAX warns on every ``os.fork()``, which would turn every later fork-based test of this
pytest session (the engine's, torch's DataLoader) into an error. The subprocesses run with
``-W error`` and 4 CPU devices (``--xla_force_host_platform_device_count=4``), and their stderr
is checked for the fork warning, which JAX raises inside an at-fork hook (printed, not raised).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from s3dlio_loader import ConfigError, LoaderOptions, MissingDependencyError
from s3dlio_loader.adapters.jax import JaxLoader, bytes_to_arrays, choose_start_method, jax_backend_initialized
from s3dlio_loader.formats import write

FILES, ROWS = 4, 24
N = FILES * ROWS


@pytest.fixture
def npz_uri(tmp_path):
    for f in range(FILES):
        ids = np.arange(f * ROWS, (f + 1) * ROWS, dtype=np.int64)
        write(f"file://{tmp_path}/npz/part-{f}.npz",
              {"x": np.repeat(ids[:, None], 3, axis=1).astype(np.float32), "id": ids})  # fmt: skip
    return f"file://{tmp_path}/npz/"


def run_jax(code: str, devices: int = 4, timeout: float = 180) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter with ``devices`` CPU devices; return result."""
    script = "import json, warnings\nwarnings.simplefilter('error')\n" + textwrap.dedent(code)
    script += "\nprint('RESULT=' + json.dumps(result))\n"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "os.fork() was called" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    return json.loads(line.removeprefix("RESULT="))


def test_batches_are_sharded_over_four_devices_with_device_prefetch(npz_uri):
    result = run_jax(f"""
        import jax, numpy as np
        from s3dlio_loader import ConfigError
        from s3dlio_loader.adapters.jax import JaxLoader
        it = JaxLoader({npz_uri!r}, format="npz", rows=True, batch_size=16, num_workers=0)
        result = {{"devices": jax.device_count(), "len": len(it), "ids": [], "shards": None}}
        for k, batch in enumerate(it):
            x, ids = batch["x"], batch["id"]
            assert isinstance(x, jax.Array) and isinstance(ids, jax.Array)
            assert x.shape == (16, 3) and x.dtype == np.float32
            assert np.array_equal(np.asarray(x)[:, 0], np.asarray(ids).astype(np.float32))
            if k == 0:
                result["shards"] = [[str(s.device), s.index[0].start, s.index[0].stop] for s in x.addressable_shards]
                result["spec"] = list(x.sharding.spec)
                # the next batch is already being placed: the loader is one batch ahead of the caller
                result["ahead"] = it.loader.state_dict()["consumed"] - it.state_dict()["consumed"]
            result["ids"] += np.asarray(ids).tolist()
        try:
            JaxLoader({npz_uri!r}, format="npz", rows=True, batch_size=6)
        except ConfigError as e:
            result["error"] = str(e)
    """)
    assert result["devices"] == 4 and result["len"] == N // 16
    assert result["ids"] == list(range(N))
    assert sorted(s[1:] for s in result["shards"]) == [[0, 4], [4, 8], [8, 12], [12, 16]]
    assert len({s[0] for s in result["shards"]}) == 4
    assert result["spec"] == ["data"]
    assert result["ahead"] == 16
    assert "multiple of the 4 local devices" in result["error"]


def test_resume_with_workers_started_without_fork(npz_uri):
    result = run_jax(f"""
        import time
        import jax, numpy as np
        from s3dlio_loader.adapters.jax import JaxLoader

        def make(num_workers):
            return JaxLoader({npz_uri!r}, format="npz", rows=True, batch_size=8, shuffle=True, seed=4,
                             num_workers=num_workers, prefetch=2)

        jax.numpy.ones(4).sum().block_until_ready()  # the backend is in use before the workers start
        full = [np.asarray(b["id"]).tolist() for b in make(0)]  # the order does not depend on the workers
        it = make(2)
        seen = []
        for batch in it:
            seen.append(np.asarray(batch["id"]).tolist())
            if len(seen) == 1:
                time.sleep(1.2)  # a slow consumer: the workers' watchdog must not take it for dead
            if len(seen) == 5:
                state = it.state_dict()
                break
        it.close()
        resumed = make(1)  # resuming with another number of workers
        resumed.load_state_dict(state)
        rest = [np.asarray(b["id"]).tolist() for b in resumed]
        next_epoch = [np.asarray(b["id"]).tolist() for b in resumed]
        result = dict(full=full, seen=seen, rest=rest, next_epoch=next_epoch,
                      start_methods=[it.loader.options.start_method, resumed.loader.options.start_method],
                      epoch=resumed.epoch)
    """)
    assert result["start_methods"] == ["forkserver", "forkserver"]
    assert sorted(i for b in result["full"] for i in b) == list(range(N))
    assert result["seen"] == result["full"][:5]
    assert result["rest"] == result["full"][5:], "resume continues after the last batch the caller got"
    assert result["epoch"] == 1 and sorted(i for b in result["next_epoch"] for i in b) == list(range(N))
    assert result["next_epoch"] != result["full"]


def test_raw_bytes_become_uint8_and_strings_stay_on_the_host(tmp_path):
    for i in range(8):
        write(f"file://{tmp_path}/raw/o{i}", bytes([i]) * 64, format="raw")
    write(f"file://{tmp_path}/t.parquet", {"id": list(range(8)), "s": [f"r{i}" for i in range(8)]})
    result = run_jax(f"""
        import jax, numpy as np
        from s3dlio_loader.adapters.jax import JaxLoader
        raw = list(JaxLoader("file://{tmp_path}/raw/", format="raw", batch_size=4, num_workers=0))
        assert all(isinstance(b, jax.Array) for b in raw)
        pq = next(iter(JaxLoader("file://{tmp_path}/t.parquet", batch_size=8, num_workers=0,
                                 items="row", decode="numpy")))
        result = dict(raw_shape=list(raw[0].shape), raw_dtype=str(raw[0].dtype),
                      first=[np.asarray(b)[:, 0].tolist() for b in raw],
                      id_type=type(pq["id"]).__name__, s=[str(v) for v in pq["s"]],
                      s_is_jax=isinstance(pq["s"], jax.Array))
    """)
    assert result["raw_shape"] == [4, 64] and result["raw_dtype"] == "uint8"
    assert result["first"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert result["id_type"] == "ArrayImpl" and not result["s_is_jax"]
    assert result["s"] == [f"r{i}" for i in range(8)]


# ----------------------------------------------------------------------------- in-process (no JAX backend)


def test_start_method_choice(monkeypatch):
    monkeypatch.delenv("S3DLIO_START_METHOD", raising=False)
    fork = LoaderOptions(start_method="fork")
    assert choose_start_method("spawn", fork) == "spawn"
    with pytest.raises(ConfigError, match="start_method"):
        choose_start_method("thread", fork)
    fake = types.ModuleType("jax._src.xla_bridge")
    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", fake)
    fake._at_fork_handler_installed = False  # type: ignore[attr-defined]
    assert not jax_backend_initialized()
    assert choose_start_method(None, fork) == "fork"
    fake._at_fork_handler_installed = True  # type: ignore[attr-defined]
    assert jax_backend_initialized()
    assert choose_start_method(None, fork) == "forkserver"
    assert choose_start_method(None, LoaderOptions(start_method="spawn")) == "spawn"
    assert choose_start_method("fork", fork) == "fork", "an explicit choice wins"
    monkeypatch.setenv("S3DLIO_START_METHOD", "fork")
    assert choose_start_method(None, fork) == "fork", "so does the environment"


def test_bytes_to_arrays_is_a_view():
    data = b"\x01\x02\x03"
    out = bytes_to_arrays({"a": data, "b": (memoryview(b"xy"), 5), "c": [bytearray(b"z")]})
    assert out["a"].dtype == np.uint8 and out["a"].tolist() == [1, 2, 3]
    assert np.shares_memory(out["a"], np.frombuffer(data, np.uint8))
    assert out["b"][0].tolist() == [120, 121] and out["b"][1] == 5
    assert out["c"][0].tolist() == [122]


def test_missing_jax_names_the_extra(monkeypatch, npz_uri):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(MissingDependencyError, match=r"s3dlio-loader\[jax\]"):
        JaxLoader(npz_uri, format="npz", rows=True)
