"""Options: the generated documentation table stays in sync with the code."""

from pathlib import Path

from s3dlio_loader.options import render_options_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_configuration_doc_matches_the_code():
    text = DOC.read_text()
    begin, end = "<!-- BEGIN GENERATED OPTIONS -->\n", "<!-- END GENERATED OPTIONS -->"
    generated = text[text.index(begin) + len(begin) : text.index(end)]
    regenerate = "python -c 'from s3dlio_loader.options import render_options_markdown as r; print(r())'"
    assert generated.strip() == render_options_markdown().strip(), (
        f"docs/configuration.md is stale: regenerate its table with `{regenerate}`"
    )


def test_every_option_has_help_text():
    from s3dlio_loader.options import DOCUMENTED_OPTIONS

    for cls in DOCUMENTED_OPTIONS:
        for name, _var, _default, text in cls.describe():
            assert len(text) > 10, f"{cls.__name__}.{name} has no help text"
