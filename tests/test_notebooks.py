"""The notebooks in notebooks/ run from top to bottom, cleanly, in well under a minute each.

Each notebook is executed by nbclient in a separate Python process (``python -W error``),
which starts an IPython kernel — a third process — over IPC sockets. So:

* nothing the Jupyter machinery (jupyter_client, pyzmq, ipykernel) warns about can reach
  pytest's ``-W error``, and no blanket warning filter is needed. The client side runs under
  ``-W error`` itself and is clean when nbclient owns the kernel manager (an outside kernel
  manager leaves zmq sockets open: ResourceWarnings at exit). IPC transport keeps ipykernel
  from logging that it runs "over TCP without encryption" and opens no TCP port;
* the kernel runs with default warning filters: ipykernel 7 itself emits a
  PendingDeprecationWarning from its shutdown handler (``do_shutdown`` not being a coroutine),
  which warnings-as-errors in the kernel would turn into an error at every shutdown;
* instead, a notebook must run *clean*: a cell that raises fails the test with the cell's
  error, and so does any output a cell writes to stderr (a warning, a log message of the
  loader, a traceback printed by a library).

The notebooks write their data under ``tempfile.mkdtemp()`` and remove it; the loader's
persisted metadata cache goes to a per-test directory (``S3DLIO_CACHE_DIR``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120
#: The budget of one notebook (the issue asks for under ~30 s; leave room for a loaded machine).
NOTEBOOK_BUDGET_S = 90

RUNNER = r"""
import json, sys, time
import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets import CaselessStrEnum


class IPCKernelManager(AsyncKernelManager):
    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)


# Build matplotlib's font cache here if the machine has none yet, so that the kernel finds it; on
# a slow machine matplotlib logs that it is "building the font cache", which is no fault of the
# notebook's (nor is it shown here: its logger is quieted for this one import).
import logging
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
import matplotlib.font_manager

path, report, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, kernel_manager_class=IPCKernelManager, kernel_name="python3", timeout=timeout,
                        resources={"metadata": {"path": "."}})
started = time.monotonic()
error = None
try:
    client.execute()
except CellExecutionError as exc:
    error = str(exc)
stderr = []
for index, cell in enumerate(nb.cells):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            stderr.append(f"cell {index}: {out['text']}")
images = sum(1 for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))
with open(report, "w") as f:
    json.dump({"error": error, "stderr": stderr, "images": images, "seconds": time.monotonic() - started}, f)
"""


def test_there_are_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "performance.ipynb"} <= names, names


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_clean(path: Path, tmp_path: Path) -> None:
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3DLIO_", "PYTEST_"))}
    env.pop("PYTHONWARNINGS", None)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    env["S3DLIO_CACHE_DIR"] = str(tmp_path / "s3dlio-cache")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", RUNNER, str(path), str(report), str(CELL_TIMEOUT_S)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=NOTEBOOK_BUDGET_S + 60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and report.exists(), (
        f"the notebook runner failed ({proc.returncode})\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    result = json.loads(report.read_text())
    assert result["error"] is None, f"{path.name}: a cell failed\n{result['error']}"
    assert result["stderr"] == [], f"{path.name}: cells wrote to stderr\n" + "\n".join(result["stderr"])
    assert proc.stderr.strip() == "", f"{path.name}: the runner or kernel wrote to stderr\n{proc.stderr[-4000:]}"
    assert result["images"] >= 2, f"{path.name}: expected its plots, got {result['images']} images"
    assert elapsed < NOTEBOOK_BUDGET_S, f"{path.name} took {elapsed:.1f} s (budget {NOTEBOOK_BUDGET_S} s)"
