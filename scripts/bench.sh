#!/usr/bin/env bash
# Install the project with the benchmark peers (s3dlio, s3torchconnector) and run one
# benchmark: scripts/bench.sh benchmarks/storage_get.py [args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all,dev,bench
exec .venv/bin/python "$@"
