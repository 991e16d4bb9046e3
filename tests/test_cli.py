"""The ``s3dlio-loader`` command, run in-process through ``main([...])``.

Every subcommand on file:// (including its error paths), the main ones against the moto S3
server, the ``--endpoint`` shortcut against Azurite and fake-gcs-server, and the installed
console script once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3dlio_loader import Store
from s3dlio_loader.cli import (
    _Context,
    _storage_option_arg,
    apply_endpoint,
    build_parser,
    build_storage_options,
    human_size,
    main,
    parse_size,
)
from s3dlio_loader.errors import ConfigError
from s3dlio_loader.storage.oplog import read_oplog

SCRIPT = Path(sys.executable).with_name("s3dlio-loader")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """data/a.bin (1536 B), data/b.txt, data/sub/c.bin, data/sub/deep/d.bin."""
    root = tmp_path / "data"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a" * 1536)
    (root / "b.txt").write_bytes(b"bee")
    (root / "sub" / "c.bin").write_bytes(b"sea")
    (root / "sub" / "deep" / "d.bin").write_bytes(b"dee")
    return root


def uri(path: Path) -> str:
    return f"file://{path}"


# ---------------------------------------------------------------- usage and errors


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("ls", "stat", "get", "put", "upload", "download", "rm", "cp", "demo"):
        assert command in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "s3dlio-loader" in out


def test_usage_errors_exit_2(capsys, tree):
    code, _, err = run(capsys)
    assert code == 2 and "a command is required" in err
    code, _, err = run(capsys, "ls", uri(tree), "--pattern", "*.bin", "--regex", "bin$")
    assert code == 2 and "not allowed with" in err
    code, _, err = run(capsys, "ls", uri(tree), "--regex", "(unclosed")
    assert code == 2 and "invalid regular expression" in err
    code, _, err = run(capsys, "--storage-option", "no-equals-sign", "ls", uri(tree))
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "--endpoint", "localhost:9000", "ls", uri(tree))
    assert code == 2 and "http" in err
    code, _, err = run(capsys, "demo", "--size", "lots")
    assert code == 2 and "not a size" in err
    code, _, err = run(capsys, "demo", "--objects", "0")
    assert code == 2 and "positive integer" in err


def test_bad_scheme_is_one_line_error(capsys):
    code, out, err = run(capsys, "ls", "ftp://host/x")
    assert code == 1 and out == ""
    assert err.startswith("s3dlio-loader: error: ") and "unsupported URI scheme 'ftp'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_verbose_shows_the_traceback(capsys, tree):
    missing = uri(tree / "missing.bin")
    code, _, err = run(capsys, "stat", missing)
    assert code == 1 and "Traceback" not in err
    code, _, err = run(capsys, "-v", "stat", missing)
    assert code == 1 and "Traceback" in err and "ObjectNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith(f"s3dlio-loader: error: stat {missing}: no such object")


def test_keyboard_interrupt_exits_130(capsys, tree, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "list", interrupted)
    code, _, err = run(capsys, "ls", uri(tree))
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_unexpected_backend_exception_is_one_line(capsys, tree, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("unable to connect")

    monkeypatch.setattr(Store, "stat", broken)
    code, _, err = run(capsys, "stat", uri(tree / "a.bin"))
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "s3dlio-loader: error: ValueError: unable to connect (run with -v for the traceback)"
    )


# ---------------------------------------------------------------- ls and stat


def test_ls_one_level_shows_sub_prefixes(capsys, tree):
    code, out, _ = run(capsys, "ls", uri(tree))
    assert code == 0
    assert out.splitlines() == [uri(tree / "a.bin"), uri(tree / "b.txt"), uri(tree / "sub") + "/"]


def test_ls_recursive_with_pattern_and_regex(capsys, tree):
    code, out, _ = run(capsys, "ls", "-r", uri(tree) + "/")
    assert code == 0 and len(out.splitlines()) == 4
    code, out, _ = run(capsys, "ls", "--recursive", uri(tree), "--pattern", "*.bin")
    assert out.splitlines() == [uri(tree / "a.bin"), uri(tree / "sub/c.bin"), uri(tree / "sub/deep/d.bin")]
    code, out, _ = run(capsys, "ls", "-r", uri(tree), "--regex", r"^sub/.*\.bin$")
    assert out.splitlines() == [uri(tree / "sub/c.bin"), uri(tree / "sub/deep/d.bin")]
    code, out, _ = run(capsys, "ls", uri(tree / "*.txt"))  # a glob URI
    assert out.splitlines() == [uri(tree / "b.txt")]


def test_ls_count_and_long(capsys, tree):
    code, out, _ = run(capsys, "ls", "-r", "--count", uri(tree))
    assert code == 0 and out.strip() == "4 objects, 1545 bytes (1.5 KiB)"
    code, out, _ = run(capsys, "ls", "--count", uri(tree))  # one level: sub/ is not an object
    assert out.strip() == "2 objects, 1539 bytes (1.5 KiB)"
    code, out, _ = run(capsys, "ls", "-l", uri(tree))
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["1.5", "KiB"] and lines[0].endswith(uri(tree / "a.bin"))
    assert lines[2].split()[0] == "DIR" and lines[2].endswith("/")
    assert "-" in lines[0].split()  # file:// has no etag


def test_ls_of_nothing_prints_nothing(capsys, tmp_path):
    code, out, _ = run(capsys, "ls", "-r", uri(tmp_path / "nothing-here/"))
    assert code == 0 and out == ""


def test_stat(capsys, tree):
    code, out, _ = run(capsys, "stat", uri(tree / "a.bin"))
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["uri"].strip() == uri(tree / "a.bin")
    assert fields["size"].strip() == "1536 (1.5 KiB)"
    assert fields["etag"].strip() == "-"
    assert str(int(os.path.getmtime(tree / "a.bin"))) in fields["mtime"]


def test_stat_missing_object(capsys, tree):
    missing = uri(tree / "nope.bin")
    code, out, err = run(capsys, "stat", missing)
    assert code == 1 and out == ""
    assert err.startswith("s3dlio-loader: error: ") and missing in err and "no such object" in err


# ---------------------------------------------------------------- get and put


def test_get_to_the_cwd_a_file_and_a_directory(capsys, tree, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, _ = run(capsys, "get", uri(tree / "sub/c.bin"))
    assert code == 0 and (work / "c.bin").read_bytes() == b"sea" and "c.bin" in out
    code, _, _ = run(capsys, "get", uri(tree / "b.txt"), "-o", str(work / "renamed.txt"))
    assert code == 0 and (work / "renamed.txt").read_bytes() == b"bee"
    (work / "into").mkdir()
    code, _, _ = run(capsys, "get", str(tree / "a.bin"), "--output", "into")  # a plain local path works too
    assert code == 0 and (work / "into" / "a.bin").read_bytes() == b"a" * 1536


def test_get_to_stdout_is_binary(capsysbinary, tree):
    payload = bytes(range(256)) * 4
    (tree / "binary.bin").write_bytes(payload)
    assert main(["get", uri(tree / "binary.bin"), "-o", "-"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out == payload


def test_get_missing_object(capsys, tree, tmp_path):
    missing = uri(tree / "missing.bin")
    code, _, err = run(capsys, "get", missing, "-o", str(tmp_path / "out.bin"))
    assert code == 1 and missing in err
    assert not (tmp_path / "out.bin").exists()


def test_put_a_file_to_an_object_and_to_a_prefix(capsys, tree, tmp_path):
    dest = tmp_path / "dest"
    code, out, _ = run(capsys, "put", str(tree / "a.bin"), uri(dest / "x/named.bin"))
    assert code == 0 and (dest / "x/named.bin").read_bytes() == b"a" * 1536 and "1.5 KiB" in out
    code, _, _ = run(capsys, "put", str(tree / "b.txt"), uri(dest) + "/")
    assert code == 0 and (dest / "b.txt").read_bytes() == b"bee"


def test_put_streams_a_large_file(capsys, tmp_path, monkeypatch):
    import s3dlio_loader.cli as cli

    monkeypatch.setattr(cli, "PUT_STREAM_CHUNK", 1000)  # force the streaming writer
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4500))
    code, _, _ = run(capsys, "put", str(src), uri(tmp_path / "out/big.bin"))
    assert code == 0 and (tmp_path / "out/big.bin").read_bytes() == src.read_bytes()


def test_put_missing_local_file(capsys, tmp_path):
    code, _, err = run(capsys, "put", str(tmp_path / "absent.bin"), uri(tmp_path / "dest.bin"))
    assert code == 1 and "absent.bin" in err and err.startswith("s3dlio-loader: error: ")


# ---------------------------------------------------------------- upload and download


def test_upload_files_directories_and_globs(capsys, tree, tmp_path):
    dest = tmp_path / "up"
    code, out, err = run(capsys, "--progress", "upload", str(tree / "b.txt"), str(tree / "sub"),
                         str(tree / "*.bin"), uri(dest) + "/")
    assert code == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "a.bin", "b.txt", "c.bin", "deep/d.bin",
    ]
    assert "uploaded 4 files (1.5 KiB)" in out
    assert "upload" in err and "100%" in err  # the progress bar, forced on without a TTY


def test_upload_without_tty_draws_no_bar(capsys, tree, tmp_path):
    code, _, err = run(capsys, "upload", str(tree), uri(tmp_path / "up"))
    assert code == 0 and err == ""


def test_upload_missing_source(capsys, tmp_path):
    code, _, err = run(capsys, "upload", str(tmp_path / "absent"), uri(tmp_path / "up"))
    assert code == 1 and "absent" in err


def test_download_a_prefix_with_a_filter(capsys, tree, tmp_path):
    dest = tmp_path / "down"
    code, out, err = run(capsys, "download", uri(tree) + "/", str(dest), "--progress", "--pattern", "*.bin")
    assert code == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "a.bin", "sub/c.bin", "sub/deep/d.bin",
    ]
    assert (dest / "sub/deep/d.bin").read_bytes() == b"dee"
    assert "downloaded 3 objects" in out and "download" in err
    code, out, _ = run(capsys, "download", uri(tree), str(tmp_path / "down2"), "--regex", r"\.txt$")
    assert code == 0 and "downloaded 1 object " in out and (tmp_path / "down2/b.txt").exists()


def test_download_refuses_path_traversal(capsys, tree, tmp_path):
    # A symlink inside the destination pointing outside it: sub/... would land outside.
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    code, _, err = run(capsys, "download", uri(tree) + "/", str(dest))
    assert code == 1 and "outside the destination directory" in err
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- rm and cp


def test_rm_one_object_a_prefix_and_a_pattern(capsys, tree):
    code, out, _ = run(capsys, "rm", uri(tree / "b.txt"))
    assert code == 0 and out.strip() == "deleted 1 object" and not (tree / "b.txt").exists()
    code, _, err = run(capsys, "rm", uri(tree / "b.txt"))
    assert code == 1 and uri(tree / "b.txt") in err
    code, out, _ = run(capsys, "rm", "-r", uri(tree) + "/", "--pattern", "sub/deep/*")
    assert code == 0 and out.strip() == "deleted 1 object" and (tree / "sub/c.bin").exists()
    code, out, _ = run(capsys, "rm", "-r", uri(tree) + "/")
    assert code == 0 and out.strip() == "deleted 2 objects"
    code, out, _ = run(capsys, "rm", "-r", uri(tree) + "/")
    assert code == 0 and out.strip() == "deleted 0 objects"


def test_cp_within_file_backend(capsys, tree):
    code, out, _ = run(capsys, "cp", uri(tree / "a.bin"), uri(tree / "a-copy.bin"))
    assert code == 0 and "server-side" in out and (tree / "a-copy.bin").read_bytes() == b"a" * 1536
    code, _, _ = run(capsys, "cp", uri(tree / "b.txt"), uri(tree / "sub") + "/")
    assert code == 0 and (tree / "sub/b.txt").read_bytes() == b"bee"
    code, _, err = run(capsys, "cp", uri(tree / "missing"), uri(tree / "x"))
    assert code == 1 and uri(tree / "missing") in err


# ---------------------------------------------------------------- options


def test_storage_options_json_values_nesting_and_scheme_prefix():
    raw = [
        "client_kwargs.endpoint_url=http://127.0.0.1:9000",
        "client_kwargs.region_name=us-east-1",
        "anon=false",
        "max_concurrency=8",
        'config_kwargs={"retries": {"max_attempts": 2}}',
        "gs:project=test",
        "name=plain text",
    ]
    options = [_storage_option_arg(text) for text in raw]
    assert build_storage_options(options, "s3") == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-east-1"},
        "anon": False,
        "max_concurrency": 8,
        "config_kwargs": {"retries": {"max_attempts": 2}},
        "name": "plain text",
    }
    assert build_storage_options(options, "gs")["project"] == "test"
    with pytest.raises(ConfigError, match="not a dict"):
        build_storage_options([_storage_option_arg("a=1"), _storage_option_arg("a.b=2")], "s3")


def test_global_options_before_and_after_the_command_are_merged():
    args = build_parser().parse_args(
        ["--storage-option", "a=1", "-v", "ls", "s3://b/", "--storage-option", "b=2", "-v", "--endpoint",
         "http://h:1"]
    )
    ctx = _Context(args)
    assert build_storage_options(ctx.storage_options, "s3") == {"a": 1, "b": 2}
    assert ctx.endpoint == "http://h:1"
    assert args.verbose + args.verbose_sub == 2


def test_endpoint_goes_where_each_filesystem_expects_it():
    assert apply_endpoint({}, "s3", "http://h:9000") == {"client_kwargs": {"endpoint_url": "http://h:9000"}}
    assert apply_endpoint({}, "gs", "http://h:4443") == {"endpoint_url": "http://h:4443"}
    assert apply_endpoint({"account_name": "acct"}, "az", "https://acct.blob.example.net/") == {
        "account_name": "acct", "account_host": "acct.blob.example.net",
    }
    az = apply_endpoint({"account_name": "acct", "account_key": "k=="}, "az", "http://127.0.0.1:10000/acct")
    assert az["connection_string"] == (
        "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=k==;"
        "BlobEndpoint=http://127.0.0.1:10000/acct;"
    )
    with pytest.raises(ConfigError, match="account_key"):
        apply_endpoint({}, "az", "http://127.0.0.1:10000/acct")
    with pytest.raises(ConfigError, match="file://"):
        apply_endpoint({}, "file", "http://h")


def test_sizes():
    assert parse_size("256k") == parse_size("256KiB") == parse_size("256 kb") == 256 * 1024
    assert parse_size("1MiB") == parse_size("1m") == 1 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1.5g") == 3 << 29
    with pytest.raises(ValueError, match="not a size"):
        parse_size("12 apples")
    assert [human_size(n) for n in (0, 1023, 1024, 1536 * 1024, 5 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 MiB", "5.0 TiB",
    ]


def test_oplog_records_the_requests(capsys, tree, tmp_path):
    path = tmp_path / "ops.tsv.zst"
    code, _, _ = run(capsys, "--oplog", str(path), "ls", "-r", uri(tree))
    assert code == 0
    code, _, _ = run(capsys, "get", uri(tree / "b.txt"), "-o", str(tmp_path / "b.txt"), "--oplog", str(path))
    assert code == 0
    ops = [(r.op, r.uri, r.status) for r in read_oplog(path)]
    assert ("list", uri(tree), "ok") in ops
    assert ("get", uri(tree / "b.txt"), "ok") in ops


# ---------------------------------------------------------------- demo


def test_demo_small(capsys, tmp_path):
    target = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--uri", uri(target), "--objects", "50", "--size", "4k")
    assert code == 0, err
    assert "50 objects x 4.0 KiB = 200.0 KiB" in out
    table = [line.replace("read ", "read-").split() for line in out.splitlines()]
    steps = ("write", "list", "read-1", "read-2", "delete")
    rows = {cells[0]: cells for cells in table if cells and cells[0] in steps}
    assert list(rows) == ["write", "list", "read-1", "read-2", "delete"]
    assert rows["read-1"][1:4] == ["50", "200.0", "KiB"] and rows["write"][1:4] == ["50", "200.0", "KiB"]
    assert rows["list"][1] == "50" and rows["delete"][1] == "50"
    assert "verified: 100 reads match" in out
    assert "retries=0 errors=0" in out and "bytes_read=409600" in out and "bytes_written=204800" in out
    assert "deleted 50 objects" in out
    assert not target.exists(), "the demo removes its data and the directory it created"


def test_demo_keep_and_progress(capsys, tmp_path):
    target = tmp_path / "kept"
    code, out, err = run(capsys, "demo", "--uri", uri(target), "--objects", "7", "--size", "1000", "--keep",
                         "--progress")
    assert code == 0
    assert sorted(p.name for p in target.iterdir()) == [f"demo-{i:06d}.bin" for i in range(7)]
    assert all(p.stat().st_size == 1000 for p in target.iterdir())
    assert "kept 7 objects" in out
    assert "read 2" in err and "MB/s" in err  # the bars: objects/s with MB/s beside


def test_demo_failure_cleans_up_and_exits_1(capsys, tmp_path, monkeypatch):
    def corrupt_get_many(self, items, **kwargs):
        for info in items:
            yield info.uri, b"x" * info.size

    monkeypatch.setattr(Store, "get_many", corrupt_get_many)
    target = tmp_path / "demo"
    code, _, err = run(capsys, "demo", "--uri", uri(target), "--objects", "5", "--size", "100")
    assert code == 1 and "differs from what was written" in err
    assert not target.exists()


# ---------------------------------------------------------------- the console script


def test_console_script_help():
    assert SCRIPT.exists(), f"{SCRIPT} missing: is the project installed in the venv?"
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: s3dlio-loader") and "download" in proc.stdout


def test_console_script_error_exit_code(tmp_path):
    proc = subprocess.run([str(SCRIPT), "stat", str(tmp_path / "none")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"s3dlio-loader: error: stat {tmp_path / 'none'}: no such object")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


# ---------------------------------------------------------------- S3 (moto)


@pytest.fixture
def s3(moto_server):
    """(bucket URI, the global options reaching moto)."""
    import uuid

    root = moto_server.make_bucket(f"cli-{uuid.uuid4().hex[:8]}")
    return root, ["--storage-option", f"client_kwargs.endpoint_url={moto_server.endpoint}"]


def test_s3_put_ls_stat_get_rm(capsys, s3, tree, tmp_path):
    root, opts = s3
    code, _, err = run(capsys, *opts, "put", str(tree / "a.bin"), f"{root}/dir/a.bin")
    assert code == 0, err
    code, _, _ = run(capsys, *opts, "put", str(tree / "b.txt"), f"{root}/dir/sub/b.txt")
    assert code == 0
    code, out, _ = run(capsys, *opts, "ls", f"{root}/dir/")
    assert out.splitlines() == [f"{root}/dir/a.bin", f"{root}/dir/sub/"]
    code, out, _ = run(capsys, "ls", "-r", "-l", f"{root}/", *opts)  # options after the command
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["1.5", "KiB"]
    assert len(lines[0].split()[4]) == 32  # the S3 etag (md5 hex)
    code, out, _ = run(capsys, *opts, "ls", "-r", "--count", root)
    assert out.strip() == "2 objects, 1539 bytes (1.5 KiB)"
    code, out, _ = run(capsys, *opts, "stat", f"{root}/dir/a.bin")
    assert code == 0 and "1536 (1.5 KiB)" in out and "etag:  -" not in out
    code, _, _ = run(capsys, *opts, "get", f"{root}/dir/sub/b.txt", "-o", str(tmp_path / "b.txt"))
    assert code == 0 and (tmp_path / "b.txt").read_bytes() == b"bee"
    code, out, _ = run(capsys, *opts, "rm", f"{root}/dir/a.bin")
    assert code == 0 and out.strip() == "deleted 1 object"
    code, _, err = run(capsys, *opts, "get", f"{root}/dir/a.bin", "-o", str(tmp_path / "a.bin"))
    assert code == 1 and f"{root}/dir/a.bin" in err and "no such object" in err
    code, out, _ = run(capsys, *opts, "rm", "-r", f"{root}/")
    assert code == 0 and out.strip() == "deleted 1 object"


def test_s3_endpoint_shortcut_upload_download_and_demo(capsys, s3, moto_server, tree, tmp_path):
    root, _ = s3
    opts = ["--endpoint", moto_server.endpoint]
    code, out, err = run(capsys, *opts, "upload", str(tree), f"{root}/up/")
    assert code == 0 and "uploaded 4 files" in out, err
    code, out, _ = run(capsys, *opts, "download", f"{root}/up/", str(tmp_path / "down"), "--pattern", "sub/*")
    assert code == 0 and "downloaded 2 objects" in out
    assert (tmp_path / "down/sub/deep/d.bin").read_bytes() == b"dee"
    code, out, err = run(capsys, *opts, "demo", "--uri", f"{root}/demo", "--objects", "20", "--size", "2k")
    assert code == 0 and "verified: 40 reads match" in out, err
    code, out, _ = run(capsys, *opts, "ls", "-r", f"{root}/demo/")
    assert out == ""


def test_s3_cp_server_side_and_across_backends(capsys, s3, tree, tmp_path):
    root, opts = s3
    code, out, _ = run(capsys, *opts, "cp", uri(tree / "a.bin"), f"{root}/a.bin")
    assert code == 0 and "through this process" in out
    code, out, _ = run(capsys, *opts, "cp", f"{root}/a.bin", f"{root}/copies/")
    assert code == 0 and "server-side" in out
    code, out, _ = run(capsys, *opts, "cp", f"{root}/copies/a.bin", uri(tmp_path / "back.bin"))
    assert code == 0 and (tmp_path / "back.bin").read_bytes() == b"a" * 1536


def test_s3_download_refuses_a_key_escaping_the_directory(capsys, s3, moto_server, tmp_path):
    root, opts = s3
    store = Store.from_uri(root, moto_server.storage_options())
    store.put(f"{root}/pre/ok.bin", b"fine")
    store.put(f"{root}/pre/../../escape.bin", b"evil")
    code, _, err = run(capsys, *opts, "download", f"{root}/pre/", str(tmp_path / "dest"))
    assert code == 1 and "escape.bin" in err and "outside the destination directory" in err
    assert not (tmp_path / "escape.bin").exists()


def test_s3_unreachable_endpoint_is_one_line_error(capsys, s3, monkeypatch):
    root, _ = s3
    monkeypatch.setenv("S3DLIO_MAX_ATTEMPTS", "1")
    code, _, err = run(capsys, "--endpoint", "http://127.0.0.1:9", "stat", f"{root}/x")
    assert code == 1 and err.startswith(f"s3dlio-loader: error: stat {root}/x: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- --endpoint on Azure and GCS


def test_endpoint_shortcut_reaches_azurite(capsys, azurite_server, tree, tmp_path):
    import uuid

    from servers import AZURITE_ACCOUNT, AZURITE_KEY

    root = azurite_server.make_bucket(f"cli-{uuid.uuid4().hex[:8]}")
    opts = ["--endpoint", f"{azurite_server.endpoint}/{AZURITE_ACCOUNT}",
            "--storage-option", f"account_name={AZURITE_ACCOUNT}",
            "--storage-option", f"account_key={AZURITE_KEY}"]
    assert run(capsys, *opts, "put", str(tree / "b.txt"), f"{root}/k/b.txt")[0] == 0
    code, out, err = run(capsys, *opts, "ls", "-r", root)
    assert code == 0 and out.splitlines() == [f"{root}/k/b.txt"], err
    assert run(capsys, *opts, "get", f"{root}/k/b.txt", "-o", str(tmp_path / "b"))[0] == 0
    assert (tmp_path / "b").read_bytes() == b"bee"


def test_endpoint_shortcut_reaches_fake_gcs(capsys, gcs_server, tree, tmp_path):
    import uuid

    root = gcs_server.make_bucket(f"cli-{uuid.uuid4().hex[:8]}")
    opts = ["--endpoint", gcs_server.endpoint,
            "--storage-option", "token=anon", "--storage-option", "project=test"]
    assert run(capsys, *opts, "put", str(tree / "b.txt"), f"{root}/k/b.txt")[0] == 0
    code, out, err = run(capsys, *opts, "ls", "-r", root)
    assert code == 0 and out.splitlines() == [f"{root}/k/b.txt"], err
    assert run(capsys, *opts, "get", f"{root}/k/b.txt", "-o", str(tmp_path / "b"))[0] == 0
    assert (tmp_path / "b").read_bytes() == b"bee"
