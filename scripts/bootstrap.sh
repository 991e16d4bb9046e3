#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras, always under
# constraints.txt (which pins the CPU build of torch). Usage: scripts/bootstrap.sh EXTRAS
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -U pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$spec" 2>&1 \
    | grep -v "^WARNING: Location 'file:" || true
.venv/bin/python -m pip check
