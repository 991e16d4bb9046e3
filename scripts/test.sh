#!/usr/bin/env bash
# README command 2: install everything the tests need (Python packages into .venv, Azurite
# from npm) and run the linters and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all,dev,docs
npm ci --prefix tests/azurite --no-audit --no-fund --loglevel=error
.venv/bin/ruff check .
.venv/bin/mypy
# The documentation site, as CI publishes it: --strict fails on any warning (see docs/contributing-docs.md).
.venv/bin/mkdocs build --strict --site-dir build/site
# pytest exits 5 when it collected no test: that fails this script, as it should.
.venv/bin/python -m pytest "$@"
