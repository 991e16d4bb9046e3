"""torch.distributed.checkpoint through DCPStorageWriter / DCPStorageReader.

Multi-rank runs use 2 gloo ranks on 127.0.0.1, each a fresh subprocess (never fork: a parent
that has run torch makes forked torch children hang).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dlio_loader.checkpoint import CheckpointExistsError, DCPStorageReader, DCPStorageWriter

WORKER = Path(__file__).resolve().parent / "ckpt_worker.py"
single_process = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(command: str, world: int, **args) -> None:
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), command, json.dumps({**args, "rank": rank, "world": world, "port": port})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(world)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append((proc.returncode, out, err))
    for rank, (code, out, err) in enumerate(outputs):
        assert code == 0 and out.strip().endswith("OK"), f"{command} rank {rank}:\n{out}\n{err[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "s3"], indirect=True)
def test_two_ranks_save_then_load_on_two_and_on_one(backend):
    uri = backend.uri("dcp", "step-1")
    common = {"uri": uri, "storage_options": backend.storage_options}
    run_ranks("dcp-ranks", 2, **common)  # save from 2 ranks, then load on 2 ranks
    names = sorted(p.rsplit("/", 1)[-1] for p in backend.fs().find(backend.path("dcp", "step-1")))
    assert "metadata.json" in names and any(n.startswith("r00001-") for n in names)
    json.loads(backend.fs().cat_file(backend.path("dcp", "step-1", "metadata.json")))  # plain JSON
    run_ranks("dcp-load-one", 1, saved_world=2, **common)


class Custom:
    def __init__(self, value: int) -> None:
        self.value = value


@single_process
def test_single_process_roundtrip_integrity_and_pickle_guard(tmp_path):
    uri = str(tmp_path / "ckpt")
    state = {"w": torch.randn(4, 5), "half": torch.randn(3).half(), "sched": {"epoch": 2, "lrs": [0.1, 0.01]}}
    dcp.save(state, storage_writer=DCPStorageWriter(uri), no_dist=True)
    target = {"w": torch.zeros(4, 5), "half": torch.zeros(3).half(), "sched": {"epoch": 0, "lrs": []}}
    dcp.load(target, storage_reader=DCPStorageReader(uri), no_dist=True)
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["half"], state["half"])
    assert target["sched"] == state["sched"]

    with pytest.raises(CheckpointException, match="CheckpointExistsError"):
        dcp.save(state, storage_writer=DCPStorageWriter(uri, overwrite=False), no_dist=True)
    assert CheckpointExistsError.__name__ == "CheckpointExistsError"

    # A flipped byte in a data file is caught by the checksum.
    data_file = next((tmp_path / "ckpt").glob("*.data"))
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 1
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointException, match="checksum mismatch"):
        dcp.load(target, storage_reader=DCPStorageReader(uri), no_dist=True)

    # Non-tensor values are pickled by DCP's planner: the reader refuses any that torch's
    # weights_only unpickler would refuse, unless told to trust the checkpoint.
    custom_uri = str(tmp_path / "custom")
    dcp.save({"obj": Custom(5), "t": torch.ones(2)}, storage_writer=DCPStorageWriter(custom_uri), no_dist=True)
    loaded = {"obj": None, "t": torch.zeros(2)}
    with pytest.raises(CheckpointException, match="weights_only"):
        dcp.load(loaded, storage_reader=DCPStorageReader(custom_uri), no_dist=True)
    dcp.load(loaded, storage_reader=DCPStorageReader(custom_uri, allow_pickle=True), no_dist=True)
    assert isinstance(loaded["obj"], Custom) and loaded["obj"].value == 5


@single_process
def test_checkpoint_id_selects_the_directory(tmp_path):
    writer = DCPStorageWriter(str(tmp_path / "unused"))
    dcp.save({"x": torch.arange(3)}, storage_writer=writer, checkpoint_id=str(tmp_path / "chosen"), no_dist=True)
    assert (tmp_path / "chosen" / "metadata.json").exists() and not (tmp_path / "unused").exists()
    target = {"x": torch.zeros(3, dtype=torch.int64)}
    dcp.load(target, storage_reader=DCPStorageReader(str(tmp_path / "x")), checkpoint_id=str(tmp_path / "chosen"),
             no_dist=True)
    assert torch.equal(target["x"], torch.arange(3))
    assert DCPStorageWriter.validate_checkpoint_id("s3://bucket/ckpt") and not DCPStorageReader.validate_checkpoint_id(
        "ftp://x/y")
