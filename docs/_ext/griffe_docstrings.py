"""A griffe extension: the package's reST-flavoured docstrings, made readable as Markdown.

The docstrings follow the Google layout (``Args:``, ``Raises:``) but use a few reST habits
that Markdown renders badly. This extension rewrites them when griffe loads each object:

* Sphinx roles (``:class:`~s3dlio_loader.storage.Store```, ``:func:`open```) become code
  spans; a fully qualified ``s3dlio_loader`` target becomes an *optional* cross-reference
  (a link when the target is rendered somewhere in the site, plain code otherwise, never a
  warning).
* Doctest paragraphs (lines starting with ``>>>`` and their output) become ``pycon`` code
  blocks instead of nested block quotes.
* A paragraph ending with ``::`` (a reST literal block) ends with ``:``; the indented
  block after it is already a Markdown code block.
* In a Google ``Args:``-like section, a line at the items' indentation that is not a
  ``name: description`` item (``Everything else as for X.``) is kept as a continuation of the
  item before it, instead of making griffe warn (which fails ``mkdocs build --strict``).

Only the rendered documentation changes; the source is not touched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const)?:`(?P<tilde>~?)(?P<target>[^`]+)`")
_PACKAGE = "s3dlio_loader"


def _role(match: re.Match[str]) -> str:
    target = match["target"].strip()
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        title, _, target = target[:-1].partition("<")
        title = title.strip()
    else:
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target.lstrip(".")
    code = f"<code>{title}</code>"
    if target.startswith(_PACKAGE + "."):
        return f'<autoref identifier="{target}" optional>{code}</autoref>'
    return code


def _doctests(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent):])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.append(f"{indent}```pycon")
            out.extend(indent + b for b in block)
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION = re.compile(r"^(?P<indent>\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|"
                      r"Other Parameters|Attributes|Raises|Warns):\s*$")
_ITEM = re.compile(r"^\s*\*{0,2}[\w.]+.*?:(\s|$)")


def _loose_items(text: str) -> str:
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i])
        i += 1
        if header is None:
            continue
        base = len(header["indent"])
        item_indent: int | None = None
        while i < len(lines):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= base:
                break
            if line.strip():
                if item_indent is None:
                    item_indent = indent
                elif indent == item_indent and not _ITEM.match(line):
                    lines[i] = "    " + line
            i += 1
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """The docstring ``text`` with roles, doctests and literal-block markers made Markdown."""
    text = _loose_items(text)
    text = _ROLE.sub(_role, text)
    text = _doctests(text)
    return re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.MULTILINE)


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite every loaded docstring with :func:`rewrite`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
