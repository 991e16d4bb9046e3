"""``s3dlio-loader train``: the main job end to end on a tiny dataset (real DataLoader workers)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from s3dlio_loader.cli import main as cli_main
from s3dlio_loader.jobs import train
from s3dlio_loader.jobs.train import MANIFEST, DataSpec, make_samples

TINY = ["--size", "1MiB", "--batch-size", "128"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = train.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generates_trains_then_reuses(tmp_path, capsys):
    uri = f"file://{tmp_path}/data"
    code, out, err = run(capsys, "--uri", uri, *TINY)
    assert code == 0, err
    assert re.search(r"train: 1,016 samples \(1\.0 MiB\) in 1 npz objects at .* \(generated in", out), out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+1,016\s", line)]
    assert [r[0] for r in rows] == ["1", "2"], "one line per epoch"
    assert "total: 2,032 samples" in out and "with 2 DataLoader worker(s)" in out
    assert re.search(r"waiting for data .* computing", out)
    assert re.search(r"final loss \d\.\d{4}, training accuracy \(last epoch\) \d+\.\d%, held-out accuracy", out)
    losses = [float(r[-2]) for r in rows]
    assert losses[1] < losses[0], "the model learns: the loss goes down"
    manifest = json.loads((tmp_path / "data" / MANIFEST).read_text())
    assert DataSpec(**manifest).samples == 1016

    code, out, _ = run(capsys, "--uri", uri, *TINY, "--workers", "0", "--epochs", "1")
    assert code == 0 and "(reused in" in out and "with 0 DataLoader worker(s)" in out
    code, out, _ = run(capsys, "--uri", uri, *TINY, "--epochs", "1", "--regenerate")
    assert code == 0 and "(generated in" in out
    code, out, _ = run(capsys, "--uri", uri, "--size", "2MiB", "--batch-size", "128", "--epochs", "1")
    assert code == 0 and "2,032 samples" in out and "(generated in" in out, "another shape is regenerated"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [MANIFEST, "part-00000.npz"]


def test_the_data_follows_the_rule(tmp_path):
    spec = DataSpec("npz", 100, 8, 3, 100, seed=5)
    x, y = make_samples(spec, (5, 0, 0), 100)
    assert x.dtype == np.float32 and x.shape == (100, 8) and set(np.unique(y)) <= {0, 1, 2}
    assert np.array_equal(y, np.argmax(x @ train.rule_weights(spec), axis=1))


def test_parquet_through_the_cli_on_s3(moto_server, capsys):
    root = moto_server.make_bucket("train-job")
    code = cli_main(["train", "--uri", f"{root}/ds", "--format", "parquet", *TINY, "--epochs", "1",
                     "--endpoint", moto_server.endpoint, "--storage-option", "s3:key=testing",
                     "--storage-option", "s3:secret=testing"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "parquet objects at s3://train-job/ds/" in out and "total: 1,016 samples" in out


def test_bad_arguments(tmp_path, capsys):
    code, _, err = run(capsys, "--uri", f"file://{tmp_path}/d", "--workers", "-1")
    assert code == 1 and "--workers must be >= 0" in err
    with pytest.raises(SystemExit):
        train.add_arguments(p := __import__("argparse").ArgumentParser())
        p.parse_args(["--format", "csv"])
    code = cli_main(["train", "--help"])
    assert code == 0 and "--regenerate" in capsys.readouterr().out
