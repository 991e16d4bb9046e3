"""engine/allocator.py: glibc malloc keeps batch memory for reuse in processes that read samples."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from s3dlio_loader.engine.allocator import AllocatorOptions, _glibc
from s3dlio_loader.errors import ConfigError

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="malloc tuning applies to glibc only")

# Builds and frees batches of 32 x 256 KiB objects, as a loader does, after reading one sample
# through a Dataset (which tunes malloc), and reports the page faults the batches cost.
_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from s3dlio_loader import Dataset
    from s3dlio_loader.engine.allocator import tune_allocator

    root, entry = sys.argv[1], sys.argv[2]
    ds = Dataset(f"file://{root}/", format="raw")
    if entry == "read_samples":
        assert ds.read_samples([0])[0] == b"x" * 16
    else:  # the direct reads of the engine workers and the torch adapter
        files = ds.open_local_raw([0])
        out = bytearray(16)
        files.read_into([out])
        assert out == b"x" * 16
    def batches():
        for _ in range(20):
            batch = [np.full(256 * 1024, i, np.uint8).tobytes() for i in range(32)]
            del batch
    batches()  # first use of the heap
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batches()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": tune_allocator(), "faults": faults}))
    """
)


def _probe(tmp_path, entry="read_samples", **env):
    (tmp_path / "obj.bin").write_bytes(b"x" * 16)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "S3DLIO_MALLOC_"))}
    environ.pop("GLIBC_TUNABLES", None)
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path), entry], env=environ, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
@pytest.mark.parametrize("entry", ["read_samples", "open_local_raw"])
def test_reading_samples_keeps_freed_batches_mapped(tmp_path, entry):
    tuned = _probe(tmp_path, entry)
    untuned = _probe(tmp_path, entry, S3DLIO_MALLOC_TUNE="0")
    assert tuned["applied"] is True and untuned["applied"] is False
    # 20 batches of 8 MiB: ~2048 faults each when every batch lands in fresh pages.
    assert untuned["faults"] > 10_000, untuned
    assert tuned["faults"] < untuned["faults"] / 10, (tuned, untuned)


@needs_glibc
def test_malloc_variables_set_by_the_user_win(tmp_path):
    result = _probe(tmp_path, MALLOC_TRIM_THRESHOLD_="131072")
    assert result["applied"] is False
    result = _probe(tmp_path, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert result["applied"] is False


def test_options_are_validated_and_read_from_the_environment():
    opts = AllocatorOptions.from_env({"S3DLIO_MALLOC_TRIM_THRESHOLD": "64MiB", "S3DLIO_MALLOC_TUNE": "off"})
    assert (opts.trim_threshold, opts.tune) == (64 << 20, False)
    with pytest.raises(ConfigError, match="mmap_threshold"):
        AllocatorOptions(mmap_threshold=64 << 20)
    with pytest.raises(ConfigError, match="trim_threshold"):
        AllocatorOptions(trim_threshold=-1)
