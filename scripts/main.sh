#!/usr/bin/env bash
# README command 1: install into .venv and run the main job. Extra arguments go to the job
# (see `.venv/bin/s3dlio-loader demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh torch
exec .venv/bin/s3dlio-loader demo "$@"
