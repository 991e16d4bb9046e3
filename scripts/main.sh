#!/usr/bin/env bash
# README command 1: install into .venv and run the main job, `s3dlio-loader train`: generate a
# dataset (or reuse it) and train a small torch model on it through DataLoader(S3IterableDataset).
# Extra arguments go to the job (see `.venv/bin/s3dlio-loader train --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh torch
exec .venv/bin/s3dlio-loader train "$@"
