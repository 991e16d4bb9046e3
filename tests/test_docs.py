"""The documentation: its runnable examples run, and the site's sources hang together.

Runnable examples. A fenced code block in ``docs/**/*.md`` is executed when the line right
before it (blank lines allowed in between) is one of these HTML comments, which Markdown
renderers do not show:

* ``<!-- runnable -->``: the block is a program of its own;
* ``<!-- runnable: continue -->``: the block continues the previous runnable block of the
  same page; the chain runs as one program (so a page can build on an earlier block).

``python`` blocks run with ``python -W error``, ``bash`` blocks with ``bash -euo pipefail``
(the virtualenv's ``bin`` first on ``PATH``), each program in a fresh subprocess whose
working directory is a new empty temporary directory, with no ``S3DLIO_*`` variables and its
own ``XDG_CACHE_HOME`` (where the loader persists its metadata cache). An
example therefore creates its own data (plain relative paths are ``file://`` URIs) and
talks to no server. The test asserts exit code 0 and shows the output when it is not.

The site itself (``mkdocs build --strict``, about 15 s) is built by ``scripts/test.sh``;
here, cheaper checks keep its sources consistent: every page is in the navigation and
exists, and every ``::: identifier`` of the API pages (and each member it lists) is found
by griffe's static analysis — in a subprocess that must not import torch, TensorFlow or JAX.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
EXAMPLE_TIMEOUT_S = 180

MARKER = re.compile(r"^<!--\s*runnable(?P<cont>:\s*continue)?\s*-->$")
FENCE_OPEN = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash"}
#: Pages whose examples must include at least one runnable block.
MUST_HAVE_RUNNABLE = [
    "getting-started.md",
    "storage/index.md",
    "loader.md",
    "formats/index.md",
    "formats/parquet.md",
    "formats/npy.md",
    "formats/tfrecord.md",
    "formats/hdf5.md",
    "formats/raw.md",
]


@dataclass
class Example:
    page: str
    line: int
    lang: str
    blocks: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def code(self) -> str:
        return "\n".join(self.blocks)


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.relative_to(DOCS).parts)


def extract(path: Path) -> tuple[list[Example], list[str]]:
    """The runnable examples of one page, and the problems found with its markers."""
    page = path.relative_to(DOCS).as_posix() if path.is_relative_to(DOCS) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    problems: list[str] = []
    pending: tuple[int, bool] | None = None  # (line of a marker waiting for its block, continue?)
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        opened = FENCE_OPEN.match(stripped)
        if opened:
            fence = opened["fence"]
            start = i
            body: list[str] = []
            indent = len(lines[i]) - len(lines[i].lstrip())
            i += 1
            while i < len(lines) and not (
                lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip().strip(fence[0])
            ):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            if i == len(lines):
                problems.append(f"{page}:{start + 1}: code block never closed")
            if pending is not None:
                marker_line, cont = pending
                pending = None
                lang = LANGS.get(opened["lang"].lower())
                if lang is None:
                    problems.append(f"{page}:{marker_line}: runnable block of unsupported language "
                                    f"{opened['lang']!r} (use one of {sorted(LANGS)})")
                elif cont:
                    if not examples or examples[-1].lang != lang:
                        problems.append(f"{page}:{marker_line}: 'runnable: continue' has no earlier {lang} "
                                        "runnable block on this page to continue")
                    else:
                        examples[-1].blocks.append("\n".join(body))
                else:
                    examples.append(Example(page, start + 1, lang, ["\n".join(body)]))
            i += 1
            continue
        marker = MARKER.match(stripped)
        if marker:
            if pending is not None:
                problems.append(f"{page}:{pending[0]}: runnable marker not followed by a code block")
            pending = (i + 1, bool(marker["cont"]))
        elif stripped and pending is not None:
            problems.append(f"{page}:{pending[0]}: runnable marker not followed by a code block")
            pending = None
        i += 1
    if pending is not None:
        problems.append(f"{page}:{pending[0]}: runnable marker at the end of the page")
    return examples, problems


def all_examples() -> tuple[list[Example], list[str]]:
    examples: list[Example] = []
    problems: list[str] = []
    for path in doc_pages():
        found, bad = extract(path)
        examples += found
        problems += bad
    return examples, problems


EXAMPLES, PROBLEMS = all_examples()


def example_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3DLIO_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    # The loader persists its metadata cache under $XDG_CACHE_HOME: one per example, so that
    # examples neither see each other's listings nor leave files in the user's ~/.cache.
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONFAULTHANDLER"] = "1"  # a crash (SIGSEGV, SIGABRT) shows every thread's Python stack
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_runnable_example(example: Example, tmp_path: Path) -> None:
    if example.lang == "python":
        script = tmp_path / "example.py"
        cmd = [sys.executable, "-W", "error", str(script)]
    else:
        script = tmp_path / "example.sh"
        cmd = ["bash", "-euo", "pipefail", str(script)]
    work = tmp_path / "work"
    work.mkdir()
    script.write_text(example.code + "\n", encoding="utf-8")
    try:
        proc = subprocess.run(cmd, cwd=work, env=example_env(tmp_path), capture_output=True, text=True,
                              timeout=EXAMPLE_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{example.id}: still running after {EXAMPLE_TIMEOUT_S} s\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (
        f"the example at docs/{example.id} exited with {proc.returncode}\n"
        f"--- code\n{example.code}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    )


def test_runnable_markers_are_well_formed() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)


@pytest.mark.parametrize("page", MUST_HAVE_RUNNABLE)
def test_page_has_runnable_examples(page: str) -> None:
    assert any(e.page == page for e in EXAMPLES), f"docs/{page} has no runnable example"


def test_extract_understands_the_convention(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(textwrap.dedent("""\
        Text.

        <!-- runnable -->
        ```python
        x = 1
        ```

        ````markdown
        <!-- runnable -->
        ```python
        not_run()
        ```
        ````

        <!-- runnable: continue -->

        ```python
        assert x == 1
        ```

        ```python
        not_marked()
        ```

        <!-- runnable -->
        ```bash
        echo hi
        ```
        """))
    found, problems = extract(page)
    assert problems == []
    assert [(e.lang, e.code) for e in found] == [("python", "x = 1\nassert x == 1"), ("bash", "echo hi")]

    page.write_text("<!-- runnable -->\nsome text\n```python\nx\n```\n<!-- runnable: continue -->\n```text\nx\n```\n")
    _, problems = extract(page)
    assert len(problems) == 2, problems


# ---------------------------------------------------------------------------- site sources


def nav_pages() -> list[str]:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return found


def test_every_page_is_in_the_navigation_and_exists() -> None:
    nav = nav_pages()
    pages = {p.relative_to(DOCS).as_posix() for p in doc_pages()}
    missing = sorted(p for p in nav if not (DOCS / p).is_file())
    assert not missing, f"mkdocs.yml names pages that do not exist: {missing}"
    orphans = sorted(pages - set(nav))
    assert not orphans, f"pages missing from mkdocs.yml's nav: {orphans}"


def reference_targets() -> list[tuple[str, str, list[str]]]:
    """(page, identifier, members listed in its options) of every ``:::`` directive."""
    yaml = pytest.importorskip("yaml")
    out = []
    for path in doc_pages():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            block = []
            for follow in lines[i + 1 :]:
                if follow.strip() and not follow.startswith("    "):
                    break
                block.append(follow)
            options = yaml.safe_load(textwrap.dedent("\n".join(block))) or {}
            members = (options.get("options") or {}).get("members") or []
            out.append((path.relative_to(DOCS).as_posix(), line[4:].strip(), list(members) if members else []))
    return out


GRIFFE_CHECK = """
import json, sys
import griffe
targets = json.loads(sys.argv[1])
package = griffe.load("s3dlio_loader", search_paths=[sys.argv[2]], allow_inspection=False)
problems = []
for page, ident, members in targets:
    try:
        obj = package[ident.split(".", 1)[1]] if "." in ident else package
    except KeyError:
        problems.append(f"{page}: ::: {ident} is not found")
        continue
    for name in members:
        if name not in obj.members:
            problems.append(f"{page}: ::: {ident} lists member {name!r}, which it does not have")
heavy = sorted(m for m in ("torch", "tensorflow", "jax", "h5py") if m in sys.modules)
print(json.dumps({"problems": problems, "imported": heavy}))
"""


def test_api_pages_resolve_statically_without_frameworks() -> None:
    pytest.importorskip("griffe")
    targets = reference_targets()
    assert targets, "no ::: directive found in docs/"
    proc = subprocess.run([sys.executable, "-c", GRIFFE_CHECK, json.dumps(targets), str(ROOT)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["problems"] == [], "\n".join(result["problems"])
    assert result["imported"] == [], f"griffe's static analysis imported {result['imported']}"


def test_docstring_extension_rewrites_sphinx_roles_and_doctests() -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        pytest.importorskip("griffe")
        from griffe_docstrings import rewrite
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    text = "A :class:`~s3dlio_loader.storage.Store` and :meth:`get`.\n\n>>> 1 + 1\n2\n\nAfter::\n\n    code\n"
    out = rewrite(text)
    assert '<autoref identifier="s3dlio_loader.storage.Store" optional><code>Store</code></autoref>' in out
    assert "<code>get</code>" in out
    assert "```pycon\n>>> 1 + 1\n2\n```" in out
    assert "After:\n" in out
